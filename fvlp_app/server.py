"""`fvlp app`: the query API and drawing page over a gallery index built by `fvlp index`.

``POST /api/query`` takes JSON ``{"sketch": <PNG or JPEG, base64 or a data URL>,
"description": <optional text>, "k": <1..100>}`` and answers the top ``k`` gallery photos
(id, cosine score, rank, JPEG thumbnail as a data URL), ranked with the query evaluation
scores (:mod:`fvlp_core.retrieval`). ``POST /api/practice`` starts a practical test (a target
photo to draw); queries naming its ``session`` also answer the target's rank, and
``POST /api/practice/<session>/finish`` records the session in the results store;
``GET /api/episodes/<photo_id>`` gives a stored drawing episode to replay step by step (a
query naming a ``target`` photo answers its rank). Bad
requests get a 4xx with ``{"error": ...}`` saying what is wrong; nothing in a request names
a file. The model loads once; queries run one at a time through it (CPU or GPU).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import random
import threading
import uuid
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image

from fvlp_core.digest import file_digest
from fvlp_core.retrieval import GallerySearch, sketch_query

if TYPE_CHECKING:
    from storage.episodes import SketchSteps

MAX_BODY_BYTES = 4 << 20  # a 512 x 512 canvas PNG is well under 1 MB
MAX_SIDE = 4096
MAX_DESCRIPTION_CHARS = 1000
MAX_K = 100
SKETCH_FORMATS = ("PNG", "JPEG")


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Query:
    sketch: Image.Image
    description: str | None
    k: int
    session: str | None = None  # a practical-test session: the answer carries its target's rank
    target: str | None = None  # a gallery photo (replay): the answer carries its rank


def parse_query(body: bytes) -> Query:
    """The request body as a query, or :class:`BadRequest` saying what is wrong with it."""
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(413, f"request body is {len(body)} bytes; at most {MAX_BODY_BYTES}")
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "request body is not JSON") from None
    if not isinstance(request, dict):
        raise BadRequest(400, "request body must be a JSON object")
    unknown = sorted(set(request) - {"sketch", "description", "k", "session", "target"})
    if unknown:
        raise BadRequest(422, f"unknown field(s) {unknown}; expected sketch, description, k, session, target")
    target = request.get("target")
    if target is not None and not isinstance(target, str):
        raise BadRequest(422, "target must be a gallery photo id")
    session = request.get("session")
    if session is not None and not isinstance(session, str):
        raise BadRequest(422, "session must be the id /api/practice gave")
    description = request.get("description")
    if description is not None and not isinstance(description, str):
        raise BadRequest(422, "description must be text")
    if description is not None and len(description) > MAX_DESCRIPTION_CHARS:
        raise BadRequest(422, f"description has {len(description)} characters; at most {MAX_DESCRIPTION_CHARS}")
    k = request.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise BadRequest(422, f"k must be a whole number from 1 to {MAX_K}")
    return Query(decode_sketch(request.get("sketch")), (description or "").strip() or None, k, session, target)


def decode_sketch(value: Any) -> Image.Image:
    if not isinstance(value, str) or not value:
        raise BadRequest(422, "sketch is missing: send the canvas as a base64 PNG")
    encoded = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, "sketch is not base64") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SKETCH_FORMATS)
            width, height = image.size  # from the header: nothing decoded yet
            if max(width, height) > MAX_SIDE:
                raise BadRequest(413, f"sketch is {width} x {height} pixels; at most {MAX_SIDE} per side")
            image.load()
    except BadRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # refused from the header
        raise BadRequest(413, f"sketch declares too many pixels; at most {MAX_SIDE} per side") from None
    except Exception:  # PIL raises many types for bytes it cannot read
        raise BadRequest(415, "sketch is not a PNG or JPEG image") from None
    rgb = flatten(image)
    low, high = rgb.convert("L").getextrema()
    if low == high:
        raise BadRequest(422, "the sketch is empty: draw a stroke first")
    return rgb


def flatten(image: Image.Image) -> Image.Image:
    """RGB on white: a canvas PNG is transparent where nothing was drawn."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


class Retriever:
    """The gallery index and the model that embeds queries into its space, loaded once."""

    def __init__(
        self,
        encoder: Any,
        photo_ids: list[str],
        embeddings: np.ndarray,
        thumbnails: list[bytes],
        manifest: dict,
        approximate: Any = None,
    ):
        self.encoder = encoder
        self.photo_ids = photo_ids
        self.thumbnails = thumbnails
        self.manifest = manifest
        self.search = GallerySearch(photo_ids, embeddings, approximate)
        self.rows = {photo_id: row for row, photo_id in enumerate(photo_ids)}
        self._lock = threading.Lock()  # one query at a time through the model
        self._replay_lock = threading.Lock()
        self._replay: tuple[SketchSteps, dict[str, str]] | None = None

    @classmethod
    def load(cls, gallery_dir: Path, checkpoint: Path | None = None, device: str = "auto") -> Retriever:
        """The gallery built by `fvlp index` and the checkpoint it was built with (another is refused)."""
        from fvlp_core.embed import FVLPEncoder
        from storage.gallery import gallery_embeddings, read_approximate_index, read_gallery, read_gallery_manifest

        manifest = read_gallery_manifest(gallery_dir)
        table = read_gallery(gallery_dir)
        checkpoint = Path(checkpoint or manifest["checkpoint"])
        if f"sha256:{file_digest(checkpoint)}" != manifest["model_fingerprint"]:
            raise ValueError(
                f"{checkpoint} is not the model {gallery_dir} was indexed with "
                f"({manifest['checkpoint']}): rebuild the index with `fvlp index --checkpoint {checkpoint}`"
            )
        return cls(
            FVLPEncoder.load(checkpoint, device=device),
            table.column("photo_id").to_pylist(),
            gallery_embeddings(table),
            table.column("thumbnail").to_pylist(),
            manifest,
            read_approximate_index(gallery_dir),
        )

    def row_of(self, photo_id: str) -> int:
        if photo_id not in self.rows:
            raise BadRequest(404, f"no photo {photo_id!r} in the gallery")
        return self.rows[photo_id]

    def episode(self, photo_id: str) -> dict[str, Any]:
        """A stored drawing episode of a gallery photo (the indexed episodes split), for replay."""
        row = self.row_of(photo_id)  # only gallery ids: a request never names a path
        steps, captions = self._replay_source()
        return {
            "photo_id": photo_id,
            "caption": captions.get(photo_id),
            "thumbnail": self.thumbnail(row),
            "steps": [
                "data:image/png;base64," + base64.b64encode(png).decode()
                for _, png in sorted((step, png) for _, step, png in steps.sketches_of([photo_id]))
            ],
        }

    def _replay_source(self) -> tuple[SketchSteps, dict[str, str]]:
        """Where each photo's sketches are, and the captions, of the indexed episodes split:
        found on the first replay and kept (a replay then reads one photo's row group)."""
        from storage.episodes import SketchSteps, read_photos

        episodes_dir = self.manifest.get("episodes_dir")
        if not episodes_dir:
            raise BadRequest(404, "this gallery was not indexed from an episodes build: nothing to replay")
        with self._replay_lock:
            if self._replay is None:
                split = self.manifest["split"]
                photos = read_photos(Path(episodes_dir), split=split, columns=["photo_id", "caption"])  # no images
                captions = dict(zip(photos["photo_id"].to_pylist(), photos["caption"].to_pylist()))
                self._replay = (SketchSteps(Path(episodes_dir), split), captions)
            return self._replay

    def thumbnail(self, row: int) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.thumbnails[row]).decode()

    def embed(self, query: Query) -> np.ndarray:
        with self._lock:
            return sketch_query(self.encoder, query.sketch, query.description)

    def answer(self, query: Query, embedding: np.ndarray) -> dict[str, Any]:
        hits = self.search.top(embedding, query.k)
        return {
            "variant": "sketch+text" if query.description else "sketch",
            "gallery_size": len(self.photo_ids),
            "results": [
                {
                    "photo_id": self.photo_ids[hit.row],
                    "score": hit.score,
                    "rank": hit.rank,
                    "thumbnail": self.thumbnail(hit.row),
                }
                for hit in hits
            ],
        }


@dataclass
class PracticeSession:
    row: int  # the target photo's gallery row
    ranks: list[int]  # its rank after each query (stroke or description edit)


class Practice:
    """The paper's practical test: a person draws a photo the page shows; the photo's rank after
    every query is recorded, and a finished session becomes a human episode in the results
    store (a ``practice`` run: ``curves`` rows with variant ``human``, one per step, metric
    ``rank``; and its m@A, m@B, wm@A, wm@B, acc@K from the metric code evaluation uses)."""

    def __init__(self, retriever: Retriever, results_store: Path, seed: int | None = None):
        self.retriever = retriever
        self.results_store = Path(results_store)
        self.sessions: dict[str, PracticeSession] = {}
        self.random = random.Random(seed)
        self._lock = threading.Lock()

    def start(self) -> dict[str, Any]:
        row = self.random.randrange(len(self.retriever.photo_ids))
        session = uuid.uuid4().hex
        with self._lock:
            self.sessions[session] = PracticeSession(row, [])
        target = self.retriever.photo_ids[row]
        return {"session": session, "photo_id": target, "thumbnail": self.retriever.thumbnail(row)}

    def record(self, session: str, embedding: np.ndarray) -> int:
        with self._lock:
            state = self.sessions.get(session)
            if state is None:
                raise BadRequest(404, f"no practical-test session {session!r}: start one at /api/practice")
            rank = self.retriever.search.rank_of(embedding, state.row)
            state.ranks.append(rank)
            return rank

    def finish(self, session: str) -> dict[str, Any]:
        from fvlp_core.metrics import sketch_retrieval_metrics
        from storage.results import ResultsStore

        with self._lock:
            state = self.sessions.pop(session, None)
        if state is None:
            raise BadRequest(404, f"no practical-test session {session!r}: start one at /api/practice")
        if not state.ranks:
            raise BadRequest(422, "the session has no strokes to record")
        gallery_size = len(self.retriever.photo_ids)
        found = sketch_retrieval_metrics(np.array([state.ranks]), gallery_size)
        metrics = [
            {"split": "practice", "variant": "human", "name": name, "value": float(found[name])}
            for name in ("m_at_A", "m_at_B", "wm_at_A", "wm_at_B")
        ] + [
            {"split": "practice", "variant": "human", "name": f"{name}_final", "value": float(values[-1])}
            for name, values in found.items()
            if name.startswith("acc_at_")
        ]
        curves = [
            {"variant": "human", "step": step, "metric": "rank", "value": float(rank)}
            for step, rank in enumerate(state.ranks, start=1)
        ]
        manifest = self.retriever.manifest
        store = ResultsStore(self.results_store)
        config = {
            "session": session,
            "photo_id": self.retriever.photo_ids[state.row],
            "gallery_size": gallery_size,
            "gallery_split": manifest.get("split"),
        }
        with store.run(
            "practice",
            config=config,
            dataset_fingerprint=manifest.get("data_fingerprint"),
            model_fingerprint=manifest.get("model_fingerprint"),
        ) as run_id:
            store.record_results(run_id, metrics=metrics, curves=curves)
        summary = {m["name"]: m["value"] for m in metrics}
        return {"run_id": run_id, "steps": len(state.ranks), "ranks": state.ranks, **summary}


def create_app(retriever: Retriever, practice: Practice | None = None) -> FastAPI:
    app = FastAPI(title="fvlp draw and retrieve", docs_url=None, redoc_url=None)
    static = resources.files("fvlp_app") / "static"

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (static / "index.html").read_text()

    @app.get("/draw.js")
    def script() -> Response:
        return Response((static / "draw.js").read_text(), media_type="text/javascript")

    @app.get("/api/gallery")
    def gallery() -> dict[str, Any]:
        manifest = retriever.manifest
        return {"photos": len(retriever.photo_ids), "split": manifest.get("split"), "model": manifest.get("checkpoint")}

    @app.post("/api/query")
    async def query(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"request body is {declared} bytes; at most {MAX_BODY_BYTES}"}, 413)
        body = b""
        async for chunk in request.stream():  # never more than the cap in memory
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return JSONResponse({"error": f"request body is over {MAX_BODY_BYTES} bytes"}, 413)
        try:
            parsed = parse_query(body)
            if parsed.session is not None and practice is None:
                raise BadRequest(404, "practical tests are off: start the app with a results store")
            target_row = None if parsed.target is None else retriever.row_of(parsed.target)
            embedding = retriever.embed(parsed)
            answer = retriever.answer(parsed, embedding)
            if target_row is not None:
                answer["target_rank"] = retriever.search.rank_of(embedding, target_row)
            if parsed.session is not None and practice is not None:
                answer["target_rank"] = practice.record(parsed.session, embedding)
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, err.status)
        return JSONResponse(answer)

    @app.get("/api/episodes")
    def episodes() -> dict[str, Any]:
        """Gallery photos a stored episode can be replayed for (the first 200)."""
        return {"photo_ids": retriever.photo_ids[:200], "replayable": bool(retriever.manifest.get("episodes_dir"))}

    @app.get("/api/episodes/{photo_id}")
    def episode(photo_id: str) -> Response:
        try:
            return JSONResponse(retriever.episode(photo_id))
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, err.status)

    @app.post("/api/practice")
    def start_practice() -> Response:
        if practice is None:
            return JSONResponse({"error": "practical tests are off: start the app with a results store"}, 404)
        return JSONResponse(practice.start())

    @app.post("/api/practice/{session}/finish")
    def finish_practice(session: str) -> Response:
        if practice is None:
            return JSONResponse({"error": "practical tests are off: start the app with a results store"}, 404)
        try:
            return JSONResponse(practice.finish(session))
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, err.status)

    return app


def main(argv: list[str] | None = None) -> int:
    from fvlp_core.config import ConfigError, Paths, resolve_config

    parser = argparse.ArgumentParser(prog="fvlp app", description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, help="Data root (default: FVLP_DATA_ROOT or ./fvlp-data)")
    parser.add_argument("--gallery", type=Path, help="Gallery index folder (default: <data-root>/gallery)")
    parser.add_argument("--checkpoint", type=Path, help="Model (default: the one the gallery was indexed with)")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    try:
        paths = resolve_config(Paths, {"data_root": args.data_root} if args.data_root else {})
        retriever = Retriever.load(args.gallery or paths.data_root / "gallery", args.checkpoint, args.device)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    import uvicorn

    practice = Practice(retriever, paths.results_store)
    print(f"drawing page on http://{args.host}:{args.port}/ ({len(retriever.photo_ids)} gallery photos)")
    print(f"practical tests are recorded in {paths.results_store}")
    uvicorn.run(create_app(retriever, practice), host=args.host, port=args.port, log_level="warning")
    return 0
