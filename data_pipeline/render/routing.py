"""What a rendered page may read and reach: every request Chromium makes goes through `guarded_route`. A local
document is served from a made-up origin (`DOCUMENT_ORIGIN`) from its own folder only (symbolic links resolved;
a path outside it is refused as `blocked_file`); in `offline` mode nothing else is fetched (`blocked_network`);
in `online` mode robots.txt is honoured, bytes per page are capped, and the request is made by
`netguard.fetch`, which refuses private addresses. Every refusal is recorded for the builder to count.
"""

from __future__ import annotations

import http.client
import mimetypes
import urllib.parse
import urllib.robotparser
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from data_pipeline.render.netguard import Allowance, Refused, allowance, fetch

# Local documents are served from this origin (`.invalid` never resolves) by the request handler.
DOCUMENT_ORIGIN = "http://document.literate.invalid"
_LOCAL_RESOURCE = "Not allowed to load local resource: "


@dataclass(frozen=True)
class LocalDocument:
    """A page on disk: `path` (or `html`, served as if it were `path`) inside `root`, the folder the page
    may read from."""

    root: Path
    path: Path
    html: str | None = None

    @classmethod
    def of(cls, target: str | Path) -> LocalDocument:
        path = (
            Path(urllib.parse.unquote(urllib.parse.urlsplit(str(target)).path))
            if str(target).startswith("file:")
            else Path(target)
        )
        path = path.resolve()
        return cls(path.parent, path)

    @property
    def url(self) -> str:
        return f"{DOCUMENT_ORIGIN}/{urllib.parse.quote(self.path.relative_to(self.root).as_posix())}"

    closed = False  # other requests go by the network mode

    def serves(self, url: str) -> bool:
        return url.startswith(DOCUMENT_ORIGIN + "/")

    def respond(self, url: str) -> tuple[int, dict[str, str], bytes]:
        body, kind = self.serve(url)
        return 200, {"content-type": kind}, body

    def serve(self, url: str) -> tuple[bytes, str]:
        """The bytes and media type of a URL of the document's origin, or `Refused` when it names a file
        outside the document's folder (or none)."""
        rel = urllib.parse.unquote(urllib.parse.urlsplit(url).path).lstrip("/")
        wanted = (self.root / rel).resolve()
        if self.html is not None and wanted == self.path:
            return self.html.encode("utf-8"), "text/html; charset=utf-8"
        if not wanted.is_relative_to(self.root.resolve()):
            raise Refused("blocked_file", f"{url}: outside the document's folder")
        if not wanted.is_file():
            raise Refused("missing_file", url)
        kind = mimetypes.guess_type(wanted.name)[0] or "application/octet-stream"
        data = wanted.read_bytes()
        if kind.startswith("text/") and _utf8_undeclared(data):
            kind += "; charset=utf-8"  # as Chromium reads such a file from disk; over HTTP it would guess
        return data, kind


@dataclass(frozen=True)
class ArchivedPage:
    """A page of a web archive (`render/warc.py`), rendered under its own URL: every request it makes is
    answered from the archive, and what the archive lacks is refused (`blocked_network`), whatever the
    network mode."""

    archive: object  # a WarcArchive: `in`, `response(url)`
    url: str

    closed = True  # nothing beyond the archive

    def serves(self, url: str) -> bool:
        return url in self.archive

    def respond(self, url: str) -> tuple[int, dict[str, str], bytes]:
        return self.archive.response(url)


Document = LocalDocument | ArchivedPage


def _utf8_undeclared(data: bytes) -> bool:
    """Text that is valid UTF-8 and names no character set of its own in its first 1024 bytes."""
    if b"charset" in data[:1024].lower():
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def console_refusal(message, blocked: list[tuple[str, str]]) -> None:
    """Chromium refuses `file:` URLs from the document's origin before any request is made; it says so on
    the console, which is where they are counted."""
    if message.type == "error" and message.text.startswith(_LOCAL_RESOURCE):
        blocked.append(("blocked_file", message.text[len(_LOCAL_RESOURCE) :]))


def guarded_route(route, cfg, local: Document | None, blocked: list, budget: dict) -> None:
    # An exception here would leave the request hanging until the page times out: refuse it instead.
    try:
        _route(route, cfg, local, budget)
    except Refused as e:
        if e.reason != "missing_file":
            blocked.append((e.reason, route.request.url))
        route.abort("blockedbyclient")
    except Exception as e:
        blocked.append(("blocked_failed", f"{route.request.url}: {type(e).__name__}"))
        route.abort("failed")


def _route(route, cfg, local: Document | None, budget: dict) -> None:
    request = route.request
    url = request.url
    if local is not None and local.serves(url):
        status, headers, body = local.respond(url)
        route.fulfill(status=status, headers=headers, body=body)
        return
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("data", "blob", "about"):
        route.continue_()
        return
    if cfg.network == "offline" or (local is not None and local.closed):
        raise Refused("blocked_network", url)
    allow = allowance(tuple(cfg.get("allow_addresses") or ()))
    if cfg.respect_robots and not _robots_allow(url, cfg.user_agent, float(cfg.request_timeout), allow):
        raise Refused("blocked_robots", url)
    left = int(cfg.max_page_bytes) - budget["bytes"]
    try:
        got = fetch(
            url,
            allow,
            float(cfg.request_timeout),
            max(left, 0),
            request.method,
            request.headers,
            request.post_data_buffer,
        )
    except (OSError, http.client.HTTPException) as e:
        raise Refused("request_failed", f"{url}: {type(e).__name__}") from e
    budget["bytes"] += len(got.body)
    headers = {
        k: v for k, v in got.headers.items() if k.lower() not in ("content-length", "transfer-encoding")
    }
    route.fulfill(status=got.status, headers=headers, body=got.body)


@lru_cache(maxsize=4096)
def _robots(origin: str, timeout: float, allow: Allowance) -> urllib.robotparser.RobotFileParser:
    rp = urllib.robotparser.RobotFileParser(origin + "/robots.txt")
    try:
        got = fetch(origin + "/robots.txt", allow, timeout, 512 * 1024)
        lines = got.body.decode("utf-8", errors="replace").splitlines() if got.status == 200 else []
    except Exception:
        lines = []  # no robots.txt (or unreachable, or refused): everything allowed, as crawlers treat it
    rp.parse(lines)
    return rp


def _robots_allow(url: str, agent: str, timeout: float, allow: Allowance) -> bool:
    parts = urllib.parse.urlsplit(url)
    return _robots(f"{parts.scheme}://{parts.netloc}", timeout, allow).can_fetch(agent, url)
