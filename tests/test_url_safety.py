"""URL fetching limits not covered in tests/test_ingest_url.py: the connect timeout, an endless
body cut at the byte cap, and the disguised spellings of internal addresses.

Only 127.0.0.1 is ever contacted; every other address here is refused before a socket opens.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import fvlp_core.fetch as fetch
from fvlp_core.fetch import FetchRequest, HttpFetcher
from tests.test_ingest_url import MAX_BYTES, local_config


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/a.png",  # 127.0.0.1 as one decimal number
        "http://0x7f.0.0.1/a.png",  # hex octet
        "http://127.1/a.png",  # short form
        "http://0.0.0.0/a.png",
        "http://[::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",  # IPv4-mapped IPv6
        "http://10.0.0.8/a.png",
        "http://192.168.1.1/a.png",
        "http://100.64.0.1/a.png",  # carrier-grade NAT
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[fd00:ec2::254]/latest/meta-data/",  # AWS metadata over IPv6
        "http://[fe80::1]/a.png",  # link-local
        "https://localhost/a.png",
    ],
)
def test_internal_addresses_are_refused_in_any_spelling(url: str, monkeypatch: pytest.MonkeyPatch):
    def no_socket(*args, **kwargs):
        raise AssertionError(f"a socket was opened for {url}")

    monkeypatch.setattr(fetch.socket, "create_connection", no_socket)
    fetcher = HttpFetcher(local_config(allow_private_addresses=False), max_bytes=MAX_BYTES)
    try:
        [result] = fetcher.fetch([FetchRequest(1, url)])
    finally:
        fetcher.close()
    assert result.status == "refused", (url, result)
    assert "non-public address" in result.error


def test_connect_timeout_is_applied_and_reported(monkeypatch: pytest.MonkeyPatch):
    seen = []

    def hanging_connect(address, timeout=None, *args, **kwargs):
        seen.append((address, timeout))
        raise TimeoutError("timed out")  # what a black-holed SYN ends in

    monkeypatch.setattr(fetch.socket, "create_connection", hanging_connect)
    config = local_config(connect_timeout_s=0.25, retries=1)
    fetcher = HttpFetcher(config, max_bytes=MAX_BYTES)
    try:
        [result] = fetcher.fetch([FetchRequest(1, "http://127.0.0.1:9/a.png")])
    finally:
        fetcher.close()
    assert result.status == "timeout" and "2 attempts" in result.error
    assert seen == [(("127.0.0.1", 9), 0.25)] * 2


@pytest.fixture
def endless_server():
    """Streams an unbounded body (no Content-Length) and records how much it managed to send."""
    sent = {"bytes": 0, "done": threading.Event()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            chunk = b"\x89PNG" + b"x" * 65_532
            try:
                while sent["bytes"] < 1_000_000_000:
                    self.wfile.write(chunk)
                    sent["bytes"] += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                sent["done"].set()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/endless.png", sent
    httpd.shutdown()
    httpd.server_close()


def test_endless_body_is_cut_at_the_byte_cap(endless_server):
    url, sent = endless_server
    fetcher = HttpFetcher(local_config(total_timeout_s=30, read_timeout_s=5), max_bytes=200_000)
    try:
        [result] = fetcher.fetch([FetchRequest(1, url)])
    finally:
        fetcher.close()
    assert result.status == "too_large" and "200000" in result.error and result.image is None
    assert sent["done"].wait(10), "the server kept streaming after the client gave up"
    # The client stopped reading near the cap: the server got at most the cap plus socket buffers out.
    assert sent["bytes"] < 50_000_000
