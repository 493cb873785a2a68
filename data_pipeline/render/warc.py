"""Web pages from WARC archives (`.warc`, `.warc.gz`, as Common Crawl and web archives keep them), read with
warcio: an index of the archive's response records by URL (their offsets only: a record is read again when it
is asked for), the HTML pages among them, and the pages a URL list or CDX index picks. A page is rendered
offline from the archive: the request handler (`render/routing.py`) answers every request the page makes from
the same archive, with the recorded status and type, and refuses what the archive lacks (`blocked_network`).
"""

from __future__ import annotations

import json
from pathlib import Path

from warcio.archiveiterator import ArchiveIterator

from data_pipeline.schema import DocumentError

EXTENSIONS = (".warc", ".warc.gz")
HTML_TYPES = ("text/html", "application/xhtml+xml")
# Response headers passed on to Chromium: the type, and where a redirect goes (bodies are given decoded).
KEPT_HEADERS = ("content-type", "location")


def is_warc(path: str | Path) -> bool:
    return str(path).lower().endswith(EXTENSIONS)


def _plain(url: str) -> str:
    return url.split("#", 1)[0]


class WarcArchive:
    """A WARC file's response records: `urls` in archive order, each URL's first record's offset."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offsets: dict[str, int] = {}
        self.types: dict[str, str] = {}
        self.statuses: dict[str, int] = {}
        try:
            with open(self.path, "rb") as f:
                records = ArchiveIterator(f)
                for record in records:
                    if record.rec_type != "response" or record.http_headers is None:
                        continue
                    url = _plain(record.rec_headers.get_header("WARC-Target-URI") or "")
                    if url and url not in self.offsets:
                        self.offsets[url] = records.get_record_offset()
                        self.types[url] = (record.http_headers.get_header("Content-Type") or "").lower()
                        self.statuses[url] = int(record.http_headers.get_statuscode() or 0)
        except Exception as e:  # warcio raises its own and zlib's errors for a broken archive
            raise DocumentError("bad_warc", f"{self.path}: {type(e).__name__}: {e}") from e

    def __contains__(self, url: str) -> bool:
        return _plain(url) in self.offsets

    def pages(self) -> list[str]:
        """The URLs of the archive's HTML pages answered 200, in archive order."""
        return [
            url
            for url in self.offsets
            if self.statuses[url] == 200 and self.types[url].split(";")[0].strip() in HTML_TYPES
        ]

    def response(self, url: str) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of the URL's record, the body with its transfer and content encodings
        removed."""
        with open(self.path, "rb") as f:
            f.seek(self.offsets[_plain(url)])
            record = next(iter(ArchiveIterator(f)))
            headers = {k.lower(): v for k, v in record.http_headers.headers if k.lower() in KEPT_HEADERS}
            return int(record.http_headers.get_statuscode()), headers, record.content_stream().read()


def selected_urls(spec: str | None) -> set[str] | None:
    """The URLs a list file picks (None: every page): one URL a line, or CDX lines (`urlkey timestamp url
    ...`), or CDXJ lines (`urlkey timestamp {"url": ...}`); `#` comments and blank lines ignored."""
    if not spec:
        return None
    path = Path(str(spec))
    if not path.is_file():
        raise FileNotFoundError(f"source.warc_urls={spec}: no such file")
    urls = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:  # CDXJ
            urls.add(_plain(json.loads(line[line.index("{") :])["url"]))
        else:
            fields = line.split()
            urls.add(_plain(fields[2] if len(fields) >= 3 else fields[0]))
    return urls
