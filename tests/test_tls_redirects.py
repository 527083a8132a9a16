"""Redirects from https to http are refused: a real TLS upstream (self-signed, trusted by the test only)."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zipstream.config import Config
from zipstream.errors import SourceRefused
from zipstream.sources.http import HttpSource

from .support import ci
from .support.upstream import UpstreamServer


@pytest.fixture
def tls_redirector(tmp_path: Path, upstream: UpstreamServer) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 whose every path redirects to the plain-http upstream (same path)."""
    if shutil.which("openssl") is None:
        ci.missing("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    target = upstream.base_url

    class Redirect(http.server.BaseHTTPRequestHandler):
        def _redirect(self) -> None:
            self.send_response(302)
            self.send_header("Location", target + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _redirect

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


def test_https_to_http_redirect_is_refused(tls_redirector: tuple[str, Path], upstream: UpstreamServer,
                                           make_config: Callable[..., Config]) -> None:
    base, cert = tls_redirector
    upstream.add("/a.txt", b"plain")
    source = HttpSource.from_config(make_config())
    source.transport.verify = str(cert)  # trust the test's own certificate, nothing else changes
    with pytest.raises(SourceRefused, match="redirect from https to http"):
        source.stat(f"{base}/a.txt")
    assert upstream.requests_for("/a.txt") == []  # the plain-http target was never contacted
