"""Draw and retrieve: the gallery index, the query API (the score evaluation computes, clear
4xx answers to bad input) and the drawing page in a real headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fvlp_core.config import IndexConfig, Paths
from fvlp_train import train
from storage.episodes import episode_photos, iter_sketch_chunks
from storage.gallery import gallery_embeddings, read_gallery
from tests.clean_fixtures import png_bomb
from tests.test_train import finetune_config, make_clean_faces, make_episodes, pretrain_config


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, prefect_harness):
    """A tiny fine-tuned checkpoint and the gallery of its test photos."""
    from flows.index import index_flow

    data_root = tmp_path_factory.mktemp("app") / "data"
    paths = Paths(data_root=data_root)
    make_clean_faces(paths.clean_dir)
    make_episodes(paths.episodes_dir)
    pre = train("pretrain", pretrain_config(data_root, epochs=1))
    tuned = train("finetune", finetune_config(data_root, pre["checkpoint"], select_on="test"))
    config = IndexConfig(paths=paths, checkpoint=tuned["checkpoint"], device="cpu")
    return config, index_flow(config)


@pytest.fixture(scope="module")
def client(indexed):
    from fastapi.testclient import TestClient

    from fvlp_app.server import Practice, Retriever, create_app

    config, _ = indexed
    retriever = Retriever.load(config.gallery_dir, device="cpu")
    return TestClient(create_app(retriever, Practice(retriever, config.paths.results_store, seed=0)))


def iter_sketches(episodes_dir, split: str):
    """(photo_id, step, PNG bytes) of every stored sketch of ``split``: the whole scan, read
    independently of the app's by-photo reader."""
    for chunk in iter_sketch_chunks(episodes_dir, split):
        yield from zip(*(chunk.column(c).to_pylist() for c in ("photo_id", "step", "image")))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_index_embeds_each_photo_once_per_model(indexed):
    from flows.index import index_flow

    config, first = indexed
    photos = episode_photos(config.episodes_dir, "test").num_rows
    assert (first["photos"], first["embedded"], first["kept"]) == (photos, photos, 0)
    again = index_flow(config)
    assert (again["photos"], again["embedded"], again["kept"]) == (photos, 0, photos)
    assert again["model_fingerprint"] == first["model_fingerprint"]


def test_an_episodes_gallery_reads_each_photo_shard_once_a_batch_at_a_time(indexed, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    import storage.episodes as episodes_storage
    from flows.index import index_flow

    config, _ = indexed
    image_reads: list[str] = []
    read_table = pq.read_table

    def counted(path, columns=None, **kwargs):
        if columns is not None and "image" in columns:
            image_reads.append(Path(path).name)
        return read_table(path, columns=columns, **kwargs)

    monkeypatch.setattr(episodes_storage.pq, "read_table", counted)
    index_flow(config.model_copy(update={"gallery": tmp_path / "batches-of-2", "batch_size": 2}))
    whole, streamed = read_gallery(config.gallery_dir), read_gallery(tmp_path / "batches-of-2")
    assert whole["photo_id"].to_pylist() == streamed["photo_id"].to_pylist()
    np.testing.assert_allclose(gallery_embeddings(whole), gallery_embeddings(streamed), atol=1e-5)
    assert sorted(image_reads) == sorted(set(image_reads))  # no shard's photos read twice


def test_a_large_gallery_gets_an_approximate_index_with_its_measured_recall(indexed, tmp_path):
    """Above ``approximate_above`` photos an HNSW index is built, its recall@10 against exact search
    measured and recorded; the app then takes the top photos from it."""
    from flows.index import index_flow
    from fvlp_app.server import Retriever

    config, _ = indexed
    large = config.model_copy(update={"gallery": tmp_path / "gallery", "approximate_above": 2})
    index_flow(large)
    manifest = json.loads((tmp_path / "gallery" / "manifest.json").read_text())
    assert manifest["approximate"]["kind"] == "hnsw" and manifest["approximate"]["recall_at_10"] == 1.0
    retriever = Retriever.load(tmp_path / "gallery", device="cpu")
    assert retriever.search.approximate is not None
    query = retriever.search.embeddings[0]
    assert [h.row for h in retriever.search.top(query, 5)] == [h.row for h in retriever.search.top_exact(query, 5)]
    index_flow(config.model_copy(update={"gallery": tmp_path / "gallery"}))  # back under the threshold
    assert not (tmp_path / "gallery" / "hnsw.faiss").exists()
    assert Retriever.load(tmp_path / "gallery", device="cpu").search.approximate is None


def test_a_gallery_of_the_cleaned_faces_or_of_a_folder_of_photos(indexed, tmp_path, client):
    """Cleaned faces are indexed as cropped; a folder's photos go through the clean stage's
    detector and crop, and a photo without a usable face is listed with the reason."""
    from fastapi.testclient import TestClient
    from skimage import data as skimage_data

    from flows.index import index_flow
    from fvlp_app.server import Retriever, create_app
    from storage.clean import read_faces
    from tests.clean_fixtures import GROUP_PHOTO, PORTRAIT, group_faces, jpeg

    config, _ = indexed
    faces = config.model_copy(update={"gallery": tmp_path / "faces", "source": "faces"})
    assert index_flow(faces)["photos"] == read_faces(config.paths.clean_dir, ["SAMPLE_ID"]).num_rows
    # Photos are loaded and embedded one encoder batch at a time: batches of 2 give the same gallery.
    index_flow(faces.model_copy(update={"gallery": tmp_path / "faces-2", "batch_size": 2}))
    whole, streamed = read_gallery(tmp_path / "faces"), read_gallery(tmp_path / "faces-2")
    assert whole["photo_id"].to_pylist() == streamed["photo_id"].to_pylist()
    np.testing.assert_allclose(gallery_embeddings(whole), gallery_embeddings(streamed), atol=1e-5)

    folder = tmp_path / "photos"
    (folder / "party").mkdir(parents=True)
    (folder / "portrait.png").write_bytes(PORTRAIT.read_bytes())
    (folder / "party" / "group.jpg").write_bytes(GROUP_PHOTO.read_bytes())  # six faces: the best one is kept
    (folder / "party" / "guest.jpg").write_bytes(jpeg(group_faces()[2]))
    (folder / "notes.jpg").write_text("not a photo")
    (folder / "coffee.png").write_bytes(_png(Image.fromarray(skimage_data.coffee())))  # no face
    photos = config.model_copy(update={"gallery": tmp_path / "folder", "source": "folder", "photos": folder})
    first = index_flow(photos)
    assert (first["photos"], first["skipped"]) == (3, 2)
    manifest = json.loads((tmp_path / "folder" / "manifest.json").read_text())
    assert manifest["skipped"]["coffee.png"].startswith("no_face")
    assert manifest["skipped"]["notes.jpg"].startswith("undecodable_image")
    assert (index_flow(photos)["embedded"], index_flow(photos)["kept"]) == (0, 3)
    in_pairs = photos.model_copy(update={"gallery": tmp_path / "folder-2", "batch_size": 2})
    assert (index_flow(in_pairs)["photos"], index_flow(in_pairs)["skipped"]) == (3, 2)  # skips span batches
    app = TestClient(create_app(Retriever.load(tmp_path / "folder", device="cpu")))
    answer = app.post("/api/query", json={"sketch": _b64(PORTRAIT.read_bytes()), "k": 3}).json()
    assert {hit["photo_id"] for hit in answer["results"]} == {"portrait.png", "party/group.jpg", "party/guest.jpg"}
    assert "not indexed from an episodes build" in app.get("/api/episodes/portrait.png").json()["error"]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_an_app_query_scores_exactly_as_evaluation_scores_that_episode_step(indexed, client):
    """One code path: the app's score of every gallery photo for a drawing step equals the
    similarity evaluation computes for the same sketch, caption and photo."""
    from fvlp_core.codec import open_image
    from fvlp_core.embed import FVLPEncoder
    from fvlp_core.evaluation import EpisodeEmbedder, embed_gallery

    config, _ = indexed
    photos = episode_photos(config.episodes_dir, "test")
    photo_ids, captions = photos["photo_id"].to_pylist(), photos["caption"].to_pylist()
    encoder = FVLPEncoder.load(config.checkpoint, device="cpu")
    images = [open_image(b).convert("RGB") for b in photos["image"].to_pylist()]
    gallery = embed_gallery(encoder, photo_ids, images, [[c] for c in captions], 64)
    photo_id, step, png = next(iter_sketches(config.episodes_dir, "test"))
    embedder = EpisodeEmbedder(encoder, gallery, 3, dict(zip(photo_ids, captions)))
    embedder.add([photo_id], [step], [open_image(png).convert("RGB")])
    row = photo_ids.index(photo_id)
    for variant, description in (("sketch+text", captions[row]), ("sketch", None)):
        evaluation = gallery.images @ embedder.queries[variant][row, step]
        answer = client.post("/api/query", json={"sketch": _b64(png), "description": description, "k": 100}).json()
        assert answer.get("variant") == variant, answer
        app = {hit["photo_id"]: hit["score"] for hit in answer["results"]}
        assert app.keys() == set(photo_ids)
        np.testing.assert_allclose([app[p] for p in photo_ids], evaluation, atol=1e-5)
        ranks = {hit["photo_id"]: hit["rank"] for hit in answer["results"]}
        assert ranks[photo_id] == int((evaluation >= evaluation[row]).sum())  # evaluation's rank of the true photo


def _blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(buffer, "PNG")  # an untouched canvas
    return buffer.getvalue()


@pytest.mark.parametrize(
    "body, status, says",
    [
        ({"sketch": _b64(b"<html>not an image</html>")}, 415, "not a PNG or JPEG image"),
        ({"sketch": _b64(png_bomb(50_000, 50_000))}, 413, "too many pixels; at most 4096 per side"),
        ({"sketch": _b64(png_bomb(5_000, 20))}, 413, "5000 x 20 pixels; at most 4096 per side"),
        ({"sketch": _b64(_blank_png())}, 422, "the sketch is empty"),
        ({"sketch": "data:image/png;base64,@@@"}, 400, "not base64"),
        ({"sketch": None}, 422, "sketch is missing"),
        ({"description": "x" * 100_000, "sketch": "AAAA"}, 422, "100000 characters; at most 1000"),
        ({"sketch": "AAAA", "k": 10_000}, 422, "k must be a whole number from 1 to 100"),
        ({"sketch": "AAAA", "path": "/etc/passwd"}, 422, "unknown field(s) ['path']"),
    ],
)
def test_bad_requests_get_a_clear_4xx_and_the_service_keeps_serving(indexed, client, body, status, says):
    config, _ = indexed
    answer = client.post("/api/query", json=body)
    assert answer.status_code == status and says in answer.json()["error"], answer.json()
    _, _, png = next(iter_sketches(config.episodes_dir, "test"))
    assert client.post("/api/query", json={"sketch": _b64(png)}).status_code == 200


def test_a_practical_test_session_is_recorded_as_a_human_episode(indexed, client):
    """The target's rank after each query, then m@A/m@B/acc@K from evaluation's metric code,
    as rows analysts query beside the evaluation runs."""
    from fvlp_core.metrics import sketch_retrieval_metrics
    from storage.results import ResultsStore

    config, _ = indexed
    started = client.post("/api/practice").json()
    assert started["thumbnail"].startswith("data:image/jpeg;base64,")
    target = started["photo_id"]
    sketches = [png for photo_id, _, png in iter_sketches(config.episodes_dir, "test") if photo_id == target]
    ranks = []
    for png in sketches[:2]:
        answer = client.post("/api/query", json={"sketch": _b64(png), "session": started["session"]}).json()
        ranks.append(answer["target_rank"])
        assert answer["target_rank"] == next(
            (hit["rank"] for hit in answer["results"] if hit["photo_id"] == started["photo_id"]), answer["target_rank"]
        )
    finished = client.post(f"/api/practice/{started['session']}/finish").json()
    gallery_size = indexed[1]["photos"]
    assert finished["ranks"] == ranks and finished["m_at_B"] == pytest.approx(
        sketch_retrieval_metrics(np.array([ranks]), gallery_size)["m_at_B"]
    )
    store = ResultsStore(config.paths.results_store)
    rows = store.query(
        "SELECT step, value FROM curves WHERE run_id = ? AND variant = 'human' AND metric = 'rank' ORDER BY step",
        [finished["run_id"]],
    )
    assert rows == [(step, float(rank)) for step, rank in enumerate(ranks, start=1)]
    assert store.query("SELECT flow, status FROM runs WHERE run_id = ?", [finished["run_id"]]) == [
        ("practice", "finished")
    ]
    again = client.post(f"/api/practice/{started['session']}/finish")
    assert again.status_code == 404 and "no practical-test session" in again.json()["error"]
    empty = client.post("/api/practice").json()["session"]
    assert client.post(f"/api/practice/{empty}/finish").status_code == 422


def test_a_stored_episode_replays_with_the_true_photo_rank_per_step(indexed, client):
    config, _ = indexed
    photo_id = episode_photos(config.episodes_dir, "test")["photo_id"].to_pylist()[0]
    episode = client.get(f"/api/episodes/{photo_id}").json()
    stored = sorted((step, png) for pid, step, png in iter_sketches(config.episodes_dir, "test") if pid == photo_id)
    assert [base64.b64decode(url.split(",", 1)[1]) for url in episode["steps"]] == [png for _, png in stored]
    ranks = []
    for url in episode["steps"]:
        body = {"sketch": url, "description": episode["caption"], "k": 100, "target": photo_id}
        answer = client.post("/api/query", json=body).json()
        by_id = {hit["photo_id"]: hit for hit in answer["results"]}
        assert answer["target_rank"] == by_id[photo_id]["rank"]  # the whole gallery is listed at k = 100
        ranks.append(answer["target_rank"])
    assert len(ranks) == 3 and all(1 <= r <= indexed[1]["photos"] for r in ranks)
    missing = client.get("/api/episodes/nobody")
    assert missing.status_code == 404 and "no photo 'nobody' in the gallery" in missing.json()["error"]
    assert client.get("/api/episodes/..%2F..%2Fetc%2Fpasswd").status_code == 404  # ids only, never paths
    wrong = client.post("/api/query", json={"sketch": episode["steps"][0], "target": "nobody"})
    assert wrong.status_code == 404


def test_oversized_and_non_json_bodies_are_refused(client):
    assert client.post("/api/query", content=b"{" * 10, headers={"content-type": "application/json"}).status_code == 400
    huge = client.post("/api/query", content=b"x" * (5 << 20), headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "at most" in huge.json()["error"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_drawing_page_in_headless_chromium_reranks_after_every_stroke(indexed, tmp_path):
    """Strokes drawn with pointer events each refresh the results; a description refreshes them too."""
    import uvicorn
    from playwright.sync_api import sync_playwright

    from fvlp_app.server import Practice, Retriever, create_app
    from storage.results import ResultsStore

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the browser test needs the OS chromium package (`make test` installs it)"
    config, _ = indexed
    port = _free_port()
    retriever = Retriever.load(config.gallery_dir, device="cpu")
    app = create_app(retriever, Practice(retriever, config.paths.results_store, seed=1))
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(f"http://127.0.0.1:{port}/")
            box = page.locator("#canvas").bounding_box()
            assert box is not None

            def draw(x0: float, y0: float, x1: float, y1: float) -> None:
                page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
                page.mouse.down()
                for t in np.linspace(0, 1, 8)[1:]:
                    page.mouse.move(
                        box["x"] + (x0 + t * (x1 - x0)) * box["width"], box["y"] + (y0 + t * (y1 - y0)) * box["height"]
                    )
                page.mouse.up()

            strokes = [(0.3, 0.3, 0.7, 0.3), (0.3, 0.3, 0.5, 0.8), (0.7, 0.3, 0.5, 0.8)]
            for drawn, stroke in enumerate(strokes, start=1):
                draw(*stroke)
                page.wait_for_selector(f'#status[data-queries="{drawn}"]', timeout=30_000)
                assert page.locator("#results li").count() == min(10, indexed[1]["photos"])
                assert page.locator("#strokes").inner_text() == f"({drawn} stroke{'s' if drawn > 1 else ''})"
            page.fill("#description", "a red circle")
            page.wait_for_selector(f'#status[data-queries="{len(strokes) + 1}"]', timeout=30_000)
            assert "sketch+text query" in page.locator("#status").inner_text()
            page.screenshot(path=str(tmp_path / "drawing.png"))

            # A practical test: the page shows a target, each stroke reports its rank, finishing records it.
            queries = len(strokes) + 1
            page.click("#practice")
            page.wait_for_selector("#target-image[src^='data:image/jpeg']", timeout=30_000)
            for stroke in strokes[:2]:
                draw(*stroke)
                queries += 1
                page.wait_for_selector(f'#status[data-queries="{queries}"]', timeout=30_000)
                assert int(page.locator("#target-rank").get_attribute("data-rank") or 0) >= 1
            page.click("#finish")
            page.wait_for_selector("#recorded:not([data-run-id=''])", timeout=30_000)
            run_id = page.locator("#recorded").get_attribute("data-run-id")

            # Replay: a stored episode played step by step, the true photo's rank after each.
            page.click("#replay")
            page.wait_for_selector('#replay-ranks[data-done="true"]', timeout=60_000)
            replayed = (page.locator("#replay-ranks").get_attribute("data-ranks") or "").split(",")
            assert len(replayed) == 3 and all(1 <= int(r) <= indexed[1]["photos"] for r in replayed)
            browser.close()
        steps = ResultsStore(config.paths.results_store).query(
            "SELECT count(*) FROM curves WHERE run_id = ? AND variant = 'human'", [run_id]
        )
        assert steps == [(2,)]  # one row per stroke of the session
    finally:
        server.should_exit = True
        thread.join(timeout=10)
