"""Web pages → page-sized tiles with the visible text's line boxes, rendered by Debian's Chromium through
Playwright (`executable_path`, no browser download).

One browser per worker process, reused across pages; a fresh context per page (no state leaks from one
page to the next). A page that does not load within `page_timeout` is reported as `PageTimeout`; pages
taller than `max_height` are cut there.

What a page may read and reach is decided by the request handler (`render/routing.py`: the document's own
folder, and in `online` mode the network through `render/netguard.py`); Chromium itself refuses `file:` URLs
from the document's origin (counted as `blocked_file` from its console). Chromium is started with a proxy
that does not exist and no loopback exception, so a request that escapes the handler (a WebSocket, a
redirect Chromium follows on its own) reaches nothing. The page scripts that measure words, blocks and
pictures are in `render/js/`; the geometry of the tiles in `render/tiles.py`.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from PIL import Image

from data_pipeline.render.html_markdown import BLOCK_NAMES, CHROME_SELECTOR
from data_pipeline.render.routing import ArchivedPage, Document, LocalDocument, console_refusal, guarded_route
from data_pipeline.render.tiles import tile_cuts
from data_pipeline.schema import DocumentError

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--hide-scrollbars",
    "--mute-audio",
    "--disable-extensions",
    "--font-render-hinting=none",
    # Nothing leaves Chromium on its own: requests the handler does not fulfil go to a proxy that is not
    # there (the port is reserved for nothing), loopback included; WebRTC may not send UDP around it.
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
]


# Markdown renders (html, readme): long code lines wrap and wide tables fit the page, so nothing a label
# holds is scrolled or clipped out of the picture; page chrome and controls, which labels leave out, are
# not drawn.
MARKDOWN_RENDER_CSS = f"""
pre, pre code, pre span {{ white-space: pre-wrap !important; overflow-wrap: anywhere !important; }}
pre {{ overflow: visible !important; max-height: none !important; }}
table {{ max-width: 100% !important; }}
td, th {{ overflow-wrap: anywhere !important; }}
{CHROME_SELECTOR} {{ display: none !important; }}
"""


# The blocks a tile is cut between, and whose tops fingerprint a page's layout.
LEAF_SELECTOR = "p, pre, li, tr, dt, dd, h1, h2, h3, h4, h5, h6, blockquote, figure, img, caption"


class PageTimeout(Exception):
    pass


# The page scripts live in `render/js/` (each file's header comment says what it does).
JS_FOLDER = Path(__file__).with_name("js")
_PLACEHOLDER = re.compile(r"__[A-Z][A-Z_]*__")


def script(name: str, code: dict[str, str] | None = None, **values) -> str:
    """`render/js/<name>.js` without its header comment, its `__NAME__` placeholders filled: `values` as JSON
    literals, `code` (other scripts) as they are. A placeholder left unfilled is an error."""
    lines = (JS_FOLDER / f"{name}.js").read_text().splitlines()
    while lines and lines[0].startswith("//"):
        lines.pop(0)
    text = "\n".join(lines) + "\n"
    for key, value in values.items():
        text = text.replace(f"__{key}__", json.dumps(value))
    for key, value in (code or {}).items():
        text = text.replace(f"__{key}__", value.strip())
    left = _PLACEHOLDER.findall(text)
    if left:
        raise ValueError(f"{JS_FOLDER / name}.js: placeholders not filled: {sorted(set(left))}")
    return text


EXTRACT_WORDS_JS = script("extract_words")
ANNOTATE_JS = script("annotate", BLOCK_NAMES=BLOCK_NAMES)
BLOCKS_JS = script(
    "blocks", BLOCK_NAMES=BLOCK_NAMES, BLOCK_SELECTOR=", ".join(BLOCK_NAMES), LEAF_SELECTOR=LEAF_SELECTOR
)
PICTURES_JS = script("pictures")
FREEZE_JS = script("freeze")
LAYOUT_JS = script("layout", LEAF_SELECTOR=LEAF_SELECTOR)
MEASURE_JS = script(
    "measure",
    code={
        "EXTRACT_WORDS": EXTRACT_WORDS_JS,
        "BLOCKS": BLOCKS_JS,
        "PICTURES": PICTURES_JS,
        "LAYOUT": LAYOUT_JS,
    },
)

# Attempts at measuring and capturing a page whose layout moves meanwhile (its scripts react to the capture).
LAYOUT_ATTEMPTS = 3


@dataclass
class RenderedPage:
    url: str
    width: int
    height: int  # rendered height (capped)
    full_height: int  # the page's own height
    tiles: list[tuple[int, Image.Image]]  # (top y, tile image)
    words: list[list]  # [text, x0, y0, x1, y1, joins_previous, block box id, in page chrome]
    inner_text: str  # document.body.innerText, when asked for
    html: str | None = None  # annotated DOM, when asked for
    blocked: list[tuple[str, str]] = field(default_factory=list)  # (reason, URL) of refused requests
    over_cap: bool = False
    pictures: list[list[float]] = field(default_factory=list)  # [x0, y0, x1, y1] of images and graphics


def chromium_path() -> str:
    path = os.environ.get("LITERATE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise DocumentError("browser_unavailable", "Chromium is not installed (Debian package chromium)")
    return path


class Browser:
    """A Chromium instance of this process. `Browser.shared()` gives the worker's reused one."""

    _shared: Browser | None = None

    def __init__(self):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )

    @classmethod
    def shared(cls) -> Browser:
        if cls._shared is None or not cls._shared.browser.is_connected():
            cls._shared = Browser()
            atexit.register(cls._shared.close)
        return cls._shared

    def close(self) -> None:
        if self._pw is None:
            return
        try:
            self.browser.close()
        except Exception:  # already gone (crashed, or its driver stopped): nothing left to close
            pass
        finally:
            self._pw.stop()
            self._pw = None
            if Browser._shared is self:
                Browser._shared = None

    def render(
        self, target: str | Path | Document, cfg, with_html: bool = False, with_text: bool = False
    ) -> RenderedPage:
        """Load `target` (a URL, a local file, a `LocalDocument` or an `ArchivedPage`) in a fresh context and
        cut it into tiles of `cfg.tile_height` px."""
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        local = None
        if isinstance(target, (LocalDocument, ArchivedPage)):
            local = target
        elif not str(target).startswith(("http://", "https://")):
            local = LocalDocument.of(target)
        url = local.url if local else str(target)
        width, tile_h = int(cfg.viewport_width), int(cfg.tile_height)
        context = self.browser.new_context(
            viewport={"width": width, "height": tile_h},
            device_scale_factor=1,
            user_agent=cfg.user_agent,
            java_script_enabled=True,
            service_workers="block",
        )
        blocked: list[tuple[str, str]] = []
        budget = {"bytes": 0}
        try:
            context.route("**/*", lambda route: guarded_route(route, cfg, local, blocked, budget))
            context.add_init_script(FREEZE_JS)
            page = context.new_page()
            page.on("console", lambda m: console_refusal(m, blocked))
            timeout_ms = float(cfg.page_timeout) * 1000
            page.set_default_timeout(timeout_ms)
            try:
                page.goto(url, wait_until="load", timeout=timeout_ms)
            except PlaywrightTimeout as e:
                raise PageTimeout(f"{url}: not loaded within {cfg.page_timeout}s") from e
            except PlaywrightError as e:
                refused = [reason for reason, where in blocked if where == url]
                reason = refused[0] if refused else "page_load_failed"  # the page itself was refused
                raise DocumentError(reason, f"{url}: {str(e).splitlines()[0]}") from e
            if with_html:
                page.add_style_tag(content=MARKDOWN_RENDER_CSS)
            cdp = context.new_cdp_session(page)
            for _ in range(LAYOUT_ATTEMPTS):
                full, words, blocks, pictures, layout = page.evaluate(MEASURE_JS)
                full = int(full)
                height = min(full, int(cfg.max_height))
                inner = page.evaluate("document.body ? document.body.innerText : ''") if with_text else ""
                html = page.evaluate(ANNOTATE_JS) if with_html else None
                cuts = tile_cuts(height, tile_h, int(cfg.min_tile_height), blocks, words)
                tiles = capture_tiles(cdp, width, cuts)
                if page.evaluate(LAYOUT_JS) == layout:
                    break
            else:
                raise DocumentError("layout_unstable", f"{url}: the layout moved while it was captured")
            return RenderedPage(
                url, width, height, full, tiles, words, inner, html, blocked, full > height, pictures
            )
        except PlaywrightTimeout as e:
            raise PageTimeout(f"{url}: {str(e).splitlines()[0]}") from e
        finally:
            try:
                context.close()
            except PlaywrightError:
                self.close()  # a wedged renderer: start a new browser for the next page


# Chromium draws a capture as one texture: past 16,384 px the rest comes out blank, so a page is captured in
# runs of whole tiles up to this height.
MAX_CAPTURE_PX = 16384


def capture_tiles(cdp, width: int, cuts: list[tuple[int, int]]) -> list[tuple[int, Image.Image]]:
    """The page's tiles `[(top, image)]` for tile cuts `[(top, bottom)]`, captured in as few runs of
    consecutive tiles as fit in `MAX_CAPTURE_PX` (Chromium's own capture with its fast PNG encoder: about
    twice as fast as `page.screenshot()`), so memory stays that of one run however tall the page."""
    tiles: list[tuple[int, Image.Image]] = []
    i = 0
    while i < len(cuts):
        j = i + 1
        while j < len(cuts) and cuts[j][1] - cuts[i][0] <= MAX_CAPTURE_PX:
            j += 1
        top, bottom = cuts[i][0], cuts[j - 1][1]
        clip = {"x": 0, "y": top, "width": width, "height": max(bottom - top, 1), "scale": 1}
        png = cdp.send(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True, "optimizeForSpeed": True},
        )["data"]
        shot = Image.open(BytesIO(base64.b64decode(png))).convert("RGB")
        tiles += [(a, shot.crop((0, a - top, shot.width, b - top))) for a, b in cuts[i:j]]
        i = j
    return tiles
