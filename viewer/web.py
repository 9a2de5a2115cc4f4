"""The HTTP side of the viewer: the static page, and the checks made before a websocket handshake.

Runs as the websockets server's ``process_request``: a request for the page gets the file; a request
for ``/ws`` goes on to the handshake only if its Origin is this server's and, when the server has a
token, it carries that token (``?token=``). Refusals are plain HTTP (401 no token, 403 wrong token or
foreign Origin), so a refused client never gets a websocket.
"""

from __future__ import annotations

import hmac
import ipaddress
import mimetypes
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

STATIC_DIR = Path(__file__).parent / "static"
WS_PATH = "/ws"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
    (
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
    ),
]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))), *SECURITY_HEADERS])
    return Response(status.value, status.phrase, headers, body)


def _text(status: HTTPStatus, text: str) -> Response:
    return _response(status, (text + "\n").encode(), "text/plain; charset=utf-8")


@dataclass
class Gate:
    """Serves the static page and decides which websocket handshakes may proceed."""

    host: str
    token: str | None
    static_dir: Path = STATIC_DIR
    port: int = 0  # set once the server is bound
    extra_origins: tuple[str, ...] = ()
    _files: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Only files present at start are served, by exact name: no path from a request touches the disk.
        self._files = {f"/{p.name}": p for p in self.static_dir.iterdir() if p.is_file()}
        self._files["/"] = self.static_dir / "index.html"

    def allowed_origin(self, origin: str | None, host_header: str | None) -> bool:
        """Browsers send Origin: accept only pages served by this server; other clients send none."""
        if origin is None:
            return True
        if origin in self.extra_origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        names = ["127.0.0.1", "localhost", "[::1]"]
        if self.host not in WILDCARD_HOSTS:
            names.append(f"[{self.host}]" if ":" in self.host else self.host)
        if parts.netloc in {f"{n}:{self.port}" for n in names}:
            return True
        # Bound to every interface: the page may have been reached by any name; it must be ours (same
        # host and port as the request) and the token check below still applies.
        return self.host in WILDCARD_HOSTS and host_header is not None and parts.netloc == host_header

    def check_token(self, query: str) -> Response | None:
        if self.token is None:
            return None
        given = parse_qs(query).get("token", [None])[0]
        if given is None:
            return _text(HTTPStatus.UNAUTHORIZED, "this viewer needs its token: open the URL it printed (?token=...)")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return _text(HTTPStatus.FORBIDDEN, "wrong token: open the URL the viewer printed")
        return None

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """The websockets hook: a file, a refusal, or None to go on with the handshake."""
        url = urlsplit(request.path)
        if url.path == WS_PATH:
            origins, hosts = request.headers.get_all("Origin"), request.headers.get_all("Host")
            if len(origins) > 1 or len(hosts) > 1:
                return _text(HTTPStatus.BAD_REQUEST, "one Origin and one Host header at most")
            if not self.allowed_origin(origins[0] if origins else None, hosts[0] if hosts else None):
                return _text(HTTPStatus.FORBIDDEN, "origin not allowed: open the viewer page served by this server")
            return self.check_token(url.query)
        path = self._files.get(url.path)
        if path is None or not path.is_file():
            return _text(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        return _response(HTTPStatus.OK, path.read_bytes(), ctype)
