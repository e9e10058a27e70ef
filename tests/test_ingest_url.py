"""HTTP fetching against a real server on 127.0.0.1 (never an outside address).

The server misbehaves on purpose: slow answers, 404/410, 5xx (flaky and permanent),
oversize bodies with and without Content-Length, non-image bodies, redirect chains and
loops, redirects to other schemes and to internal addresses, and a body that drips
slower than the total time limit allows.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fvlp_core.fetch as fetch
from fvlp_core.config import HttpFetchConfig, IngestConfig, Paths
from fvlp_core.fetch import FetchRequest, HttpFetcher
from storage.shards import read_dataset
from tests.test_fetch import png_bytes

IMAGE = png_bytes(16)
MAX_BYTES = 4_000


class Server:
    """State shared with the handler: request log and the concurrency high-water mark."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.flaky_seen: set[str] = set()
        self.holding = 0  # /hold requests being held now
        self.max_holding = 0
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path


def make_handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def send_body(self, body: bytes, content_type: str = "image/png", status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            with state.lock:
                state.paths.append(self.path)
            try:
                self.route(self.path)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up, as it should for some routes

        def route(self, path: str) -> None:
            if path.startswith("/img/"):
                self.send_body(IMAGE)
            elif path == "/missing":
                self.send_body(b"no", "text/plain", 404)
            elif path == "/gone":
                self.send_body(b"gone", "text/plain", 410)
            elif path == "/forbidden":
                self.send_body(b"no", "text/plain", 403)
            elif path.startswith("/flaky/"):
                first = path not in state.flaky_seen
                state.flaky_seen.add(path)
                self.send_body(b"busy", "text/plain", 503) if first else self.send_body(IMAGE)
            elif path == "/down":
                self.send_body(b"down", "text/plain", 503)
            elif path == "/slow":
                time.sleep(2.0)
                self.send_body(IMAGE)
            elif path == "/big":
                self.send_body(png_bytes(200))
            elif path == "/big-chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(50):
                    chunk = b"x" * 1000
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            elif path == "/html":
                self.send_body(b"<html><body>a page, not a picture</body></html>", "text/html")
            elif path.startswith("/redirect/"):
                hops = int(path.rsplit("/", 1)[1])
                self.redirect("/img/1.png" if hops == 0 else f"/redirect/{hops - 1}")
            elif path == "/loop":
                self.redirect("/loop")
            elif path == "/to-file":
                self.redirect("file:///etc/passwd")
            elif path == "/to-internal":
                port = state.httpd.server_address[1]
                self.redirect(f"http://127.0.0.2:{port}/img/1.png")
            elif path == "/drip":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(100):
                    self.wfile.write(b"x" * 10)
                    self.wfile.flush()
                    time.sleep(0.05)
            elif path.startswith("/caf%C3%A9%20photo.png"):
                self.send_body(IMAGE)  # reached only if the client percent-encoded the path
            elif path == "/hold":
                # Counted while held, and no longer before the response goes out: a client
                # that has its response can start its next request without a race here.
                with state.lock:
                    state.holding += 1
                    state.max_holding = max(state.max_holding, state.holding)
                time.sleep(0.3)
                with state.lock:
                    state.holding -= 1
                self.send_body(IMAGE)
            else:
                self.send_body(b"?", "text/plain", 404)

    return Handler


@pytest.fixture
def server():
    state = Server()
    state.httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.httpd.daemon_threads = True
    thread = threading.Thread(target=state.httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    state.httpd.shutdown()
    state.httpd.server_close()


def local_config(**overrides) -> HttpFetchConfig:
    settings = dict(
        allow_private_addresses=True,
        connect_timeout_s=1.0,
        read_timeout_s=0.5,
        total_timeout_s=1.5,
        retries=1,
        backoff_s=0.01,
        max_redirects=3,
        concurrency=4,
    )
    return HttpFetchConfig(**{**settings, **overrides})


def fetch_paths(server: Server, paths: list[str], **overrides):
    fetcher = HttpFetcher(local_config(**overrides), max_bytes=MAX_BYTES)
    try:
        return fetcher.fetch([FetchRequest(i, server.url(p)) for i, p in enumerate(paths)])
    finally:
        fetcher.close()


def test_each_kind_of_answer_gets_its_status(server: Server):
    routes = {
        "/img/1.png": "ok",
        "/missing": "not_found",
        "/gone": "not_found",
        "/forbidden": "http_error",
        "/down": "http_error",
        "/slow": "timeout",
        "/big": "too_large",
        "/big-chunked": "too_large",
        "/html": "not_image",
        "/redirect/2": "ok",
        "/loop": "http_error",
        "/to-file": "refused",
        "/drip": "timeout",
    }
    results = dict(zip(routes, fetch_paths(server, list(routes))))
    assert {path: r.status for path, r in results.items()} == routes
    assert results["/img/1.png"].image == IMAGE
    assert all(r.image is None for p, r in results.items() if routes[p] != "ok")
    assert results["/forbidden"].error == "HTTP 403"
    assert "HTTP 503" in results["/down"].error and "2 attempts" in results["/down"].error
    assert "Content-Length" in results["/big"].error
    assert "more than 3 redirects" in results["/loop"].error
    assert "'file'" in results["/to-file"].error


def test_transient_failures_are_retried(server: Server):
    [result] = fetch_paths(server, ["/flaky/a"])
    assert result.status == "ok"
    assert server.paths.count("/flaky/a") == 2
    [no_retry] = fetch_paths(server, ["/flaky/b"], retries=0)
    assert no_retry.status == "http_error"


def test_scraped_urls_with_spaces_and_non_ascii_are_encoded(server: Server):
    [result] = fetch_paths(server, ["/café photo.png?size=large&x=%41"])
    assert result.status == "ok"
    assert server.paths == ["/caf%C3%A9%20photo.png?size=large&x=%41"]


def test_redirect_limit_counts_hops(server: Server):
    # /redirect/N answers N + 1 redirects before the image.
    ok, too_many = fetch_paths(server, ["/redirect/2", "/redirect/3"])
    assert ok.status == "ok"
    assert too_many.status == "http_error"


def test_concurrency_is_bounded(server: Server):
    results = fetch_paths(server, ["/hold"] * 12, concurrency=3)
    assert [r.status for r in results] == ["ok"] * 12
    assert 2 <= server.max_holding <= 3  # parallel, and never above the bound


def test_private_addresses_are_refused_without_the_opt_in(server: Server):
    fetcher = HttpFetcher(local_config(allow_private_addresses=False), max_bytes=MAX_BYTES)
    port = server.httpd.server_address[1]
    urls = [server.url("/img/1.png"), f"http://localhost:{port}/img/1.png", "http://169.254.169.254/latest/meta-data/"]
    results = fetcher.fetch([FetchRequest(i, u) for i, u in enumerate(urls)])
    fetcher.close()
    assert [r.status for r in results] == ["refused"] * 3
    assert "127.0.0.1" in results[0].error and "169.254.169.254" in results[2].error
    assert server.paths == []  # the server was never contacted


def test_every_redirect_hop_is_checked(server: Server, monkeypatch: pytest.MonkeyPatch):
    # Pretend 127.0.0.1 is a public address so the first hop goes through; the redirect
    # to 127.0.0.2 (still "internal") must then be refused without being contacted.
    monkeypatch.setattr(fetch, "is_public_address", lambda address: address == "127.0.0.1")
    [result] = fetch_paths(server, ["/to-internal"], allow_private_addresses=False)
    assert result.status == "refused" and "127.0.0.2" in result.error
    assert server.paths == ["/to-internal"]


@pytest.mark.parametrize(
    "url, reason",
    [
        (None, "no URL"),
        ("", "no URL"),
        ("ftp://example.com/a.png", "'ftp'"),
        ("file:///etc/passwd", "'file'"),
        ("javascript:alert(1)", "'javascript'"),
        ("http:///nohost.png", "no host"),
        ("http://127.0.0.1:99999/a.png", "bad port"),
    ],
)
def test_unusable_urls_are_refused(url, reason):
    [result] = HttpFetcher(local_config(), max_bytes=MAX_BYTES).fetch([FetchRequest(1, url)])
    assert result.status == "refused"
    assert reason in result.error


def test_ingest_flow_from_urls(server: Server, tmp_path: Path, prefect_harness):
    from flows.ingest import ingest_flow

    paths = ["/img/1.png", "/missing", "/html", "/big", "/redirect/1", "/img/6.png", "/flaky/x"]
    metadata = tmp_path / "meta.parquet"
    pq.write_table(
        pa.table(
            {
                "SAMPLE_ID": pa.array(range(1, len(paths) + 1), pa.int64()),
                "URL": [server.url(p) for p in paths],
                "TEXT": [f"caption {i}" for i in range(len(paths))],
                "WIDTH": [16] * len(paths),
                "HEIGHT": [16] * len(paths),
                "similarity": [0.3] * len(paths),
            }
        ),
        metadata,
    )
    config = IngestConfig(
        paths=Paths(data_root=tmp_path / "data"),
        source="url",
        metadata=[metadata],
        shard_size=3,
        max_image_bytes=MAX_BYTES,
        http=local_config(),
    )
    result = ingest_flow(config)
    assert result["rows"] == len(paths) and result["shards"] == 3 and result["written_shards"] == 3
    table = read_dataset(config.paths.raw_dir)
    assert table.column("fetch_status").to_pylist() == ["ok", "not_found", "not_image", "too_large", "ok", "ok", "ok"]
    requests_before = len(server.paths)
    assert ingest_flow(config)["written_shards"] == 0
    assert len(server.paths) == requests_before  # a complete re-run fetches nothing


def test_an_unexpected_failure_stays_with_its_row(server: Server, monkeypatch: pytest.MonkeyPatch):
    real_resolve = fetch.resolve_target

    def resolve(host, port, allow_private):
        if port == 1:
            raise RuntimeError("resolver bug")
        return real_resolve(host, port, allow_private)

    monkeypatch.setattr(fetch, "resolve_target", resolve)
    fetcher = HttpFetcher(local_config(), max_bytes=MAX_BYTES)
    broken, fine = fetcher.fetch(
        [FetchRequest(1, "http://127.0.0.1:1/x.png"), FetchRequest(2, server.url("/img/2.png"))]
    )
    fetcher.close()
    assert broken.status == "error" and "RuntimeError: resolver bug" in broken.error
    assert fine.status == "ok"
