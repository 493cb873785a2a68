"""Web pages → page-sized tiles with the visible text's line boxes, rendered by Debian's Chromium through
Playwright (`executable_path`, no browser download).

One browser per worker process, reused across pages; a fresh context per page (no state leaks from one
page to the next). A page that does not load within `page_timeout` is reported as `PageTimeout`; pages
taller than `max_height` are cut there.

What a page may read and reach. A local document is served to Chromium from a made-up origin
(`DOCUMENT_ORIGIN`) by the request handler, from its own folder only (symbolic links resolved): a path
outside it is refused as `blocked_file`, and Chromium itself refuses `file:` URLs from that origin (counted
as `blocked_file` from its console). Every other request goes through the handler: refused in `offline`
mode (`blocked_network`); in `online` mode (URL lists) robots.txt is honoured, bytes per page are capped,
and the request is made by `netguard.fetch`, which refuses private addresses after every redirect and pins
the address it checked. Chromium is started with a proxy that does not exist and no loopback exception, so
a request that escapes the handler (a WebSocket, a redirect Chromium follows on its own) reaches nothing.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import json
import mimetypes
import os
import shutil
import urllib.parse
import urllib.robotparser
from dataclasses import dataclass, field
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from PIL import Image

from data_pipeline.render.html_markdown import BLOCK_NAMES, CHROME_SELECTOR
from data_pipeline.render.netguard import Allowance, Refused, allowance, fetch
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
# Local documents are served from this origin (`.invalid` never resolves) by the request handler.
DOCUMENT_ORIGIN = "http://document.literate.invalid"
_LOCAL_RESOURCE = "Not allowed to load local resource: "

# Every visible word of the page with its box in page coordinates, in DOM order, and whether it continues
# the previous word with no white space between (e.g. `foo<b>bar</b>`). Visible: not display:none, not
# visibility:hidden, not transparent (opacity or colour), not clipped away by an overflow ancestor.
EXTRACT_WORDS_JS = r"""
() => {
  const sx = window.scrollX, sy = window.scrollY;
  const SKIP = new Set(['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE', 'TEXTAREA', 'OPTION', 'SELECT']);
  const vis = new Map(), clips = new Map(), boxes = new Map(), chromes = new Map();
  const INLINE = new Set(['inline', 'contents', 'inline-block', 'inline-flex', 'ruby', 'ruby-text']);
  // the block box a text node lives in: words of different boxes (table cells, columns) never share a line
  const boxOf = (el) => {
    if (boxes.has(el)) return boxes.get(el);
    const id = el.parentElement && INLINE.has(getComputedStyle(el).display) ? boxOf(el.parentElement) : boxes.size + 1;
    boxes.set(el, id);
    return id;
  };
  // navigation, page footers and asides: visible (so in layout) but not content (so not in markdown)
  const chromeOf = (el) => {
    if (chromes.has(el)) return chromes.get(el);
    const c = el.closest('nav, footer, aside, [role=navigation], [role=contentinfo], [role=search], [role=banner], [role=complementary]') ? 1 : 0;
    chromes.set(el, c);
    return c;
  };
  const visible = (el) => {
    if (vis.has(el)) return vis.get(el);
    let ok = el.checkVisibility ? el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true}) : true;
    if (ok) {
      const cs = getComputedStyle(el);
      const m = cs.color.match(/rgba?\(([^)]*)\)/);
      if (m && m[1].split(',').length === 4 && parseFloat(m[1].split(',')[3]) === 0) ok = false;
      if (parseFloat(cs.fontSize) < 2) ok = false;
    }
    vis.set(el, ok);
    return ok;
  };
  const clipOf = (el) => {
    // the page itself clips at the captured width: what overflows to the right is not in any tile
    if (!el || el === document.body || el === document.documentElement) return [-1e9, -1e9, window.innerWidth + sx, 1e9];
    if (clips.has(el)) return clips.get(el);
    let r = clipOf(el.parentElement);
    const cs = getComputedStyle(el);
    if (cs.overflowX !== 'visible' || cs.overflowY !== 'visible') {
      const b = el.getBoundingClientRect();
      r = [Math.max(r[0], b.left + sx), Math.max(r[1], b.top + sy), Math.min(r[2], b.right + sx), Math.min(r[3], b.bottom + sy)];
    }
    clips.set(el, r);
    return r;
  };
  const out = [];
  const range = document.createRange();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  let prevSpace = true, node;
  while ((node = walker.nextNode())) {
    const el = node.parentElement, text = node.nodeValue;
    if (!el || SKIP.has(el.tagName) || !text || !visible(el)) continue;
    const clip = clipOf(el), box = boxOf(el), chrome = chromeOf(el), re = /\S+/g;
    const push = (t, r, join) => {
      const x0 = Math.max(r.left + sx, clip[0]), y0 = Math.max(r.top + sy, clip[1]);
      const x1 = Math.min(r.right + sx, clip[2]), y1 = Math.min(r.bottom + sy, clip[3]);
      // mostly clipped away (less than half its height or width showing): not visible text
      if (x1 - x0 < 0.5 * r.width || y1 - y0 < 0.5 * r.height || x1 - x0 < 0.5 || y1 - y0 < 0.5) return false;
      out.push([t, x0, y0, x1, y1, join ? 1 : 0, box, chrome]);
      return true;
    };
    // A text node on one line is one item (fast); a node that wraps is measured word by word.
    range.selectNodeContents(node);
    const whole = range.getClientRects();
    const inClip = (r) => r.left + sx >= clip[0] && r.top + sy >= clip[1] && r.right + sx <= clip[2] && r.bottom + sy <= clip[3];
    if (whole.length === 1 && /\S/.test(text) && inClip(whole[0])) {
      push(text.trim().split(/\s+/).join(' '), whole[0], /^\S/.test(text) && !prevSpace);
      prevSpace = /\s$/.test(text);
      continue;
    }
    let m, first = true;
    while ((m = re.exec(text))) {
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const join = first && m.index === 0 && !prevSpace;
      for (const r of range.getClientRects()) {
        if (push(m[0], r, join)) break;  // a word is one box: its first visible line fragment
      }
      first = false;
    }
    prevSpace = /\s$/.test(text);
  }
  return out;
}
"""

# Mark every element with its vertical position and visibility, so the serialised DOM can be cut into tiles.
ANNOTATE_JS = r"""
() => {
  const sy = window.scrollY;
  const range = document.createRange();
  // Where an element's content is drawn: the middle of its first line of text (a list item's box or a
  // paragraph's margin may start in the tile above its text), else the top of its box. Tiles take an
  // element by this y, as they take a text line by its middle.
  const lineOf = (node) => {  // a text node: the middle of its first drawn character, or null
    const m = /\S/.exec(node.nodeValue);
    if (!m) return null;
    range.setStart(node, m.index);
    range.setEnd(node, m.index + 1);
    const r = range.getClientRects()[0];
    return r && r.height > 0 ? (r.top + r.bottom) / 2 : null;
  };
  const firstLine = (el) => {
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    let node;
    while ((node = walker.nextNode())) {
      const y = lineOf(node);
      if (y !== null) return y;
    }
    return null;
  };
  // A container holding blocks and inline content between them: the y of each run of inline content
  // (the runs as the markdown converter cuts them: split by children whose tags are blocks).
  const BLOCKS = new Set(__BLOCK_NAMES__);
  const runsOf = (el) => {
    const runs = [];
    let open = false, y = null;
    for (const node of el.childNodes) {
      if (node.nodeType === 1 && BLOCKS.has(node.localName)) {
        if (open) runs.push(y === null ? -1 : Math.round(y + sy));
        open = false;
        y = null;
      } else if (node.nodeType === 1 || node.nodeType === 3) {
        open = true;
        if (y === null) y = node.nodeType === 1 ? firstLine(node) : lineOf(node);
      }
    }
    if (open) runs.push(y === null ? -1 : Math.round(y + sy));
    return runs;
  };
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    const y = firstLine(el);
    el.setAttribute('data-lt-y', String(Math.round((y === null ? r.top : y) + sy)));
    const ok = el.checkVisibility ? el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true}) : true;
    if (!ok) el.setAttribute('data-lt-hidden', '1');
    if ([...el.children].some((c) => BLOCKS.has(c.localName))) el.setAttribute('data-lt-runs', runsOf(el).join(','));
  }
  // Code blocks: where each of their lines starts and ends (a wrapped line spans several rows), so a block
  // cut by a tile gives each tile its lines. -1 for a line with nothing drawn (an empty line).
  for (const pre of document.body.querySelectorAll('pre')) {
    const spans = [];
    // the text the markdown takes: none of hidden elements or controls (as `_shown_text` there)
    const shown = (node) => {
      for (let el = node.parentElement; el && el !== pre.parentElement; el = el.parentElement) {
        // hidden elements were marked by the loop above
        if (el.localName === 'button' || el.localName === 'input' || el.hasAttribute('data-lt-hidden')) {
          return NodeFilter.FILTER_REJECT;
        }
      }
      return NodeFilter.FILTER_ACCEPT;
    };
    const walker = document.createTreeWalker(pre, NodeFilter.SHOW_TEXT, shown);
    let node, cur = [1e9, -1e9];
    while ((node = walker.nextNode())) {
      const t = node.nodeValue;
      let start = 0;
      while (start <= t.length) {
        const nl = t.indexOf('\n', start), end = nl < 0 ? t.length : nl;
        if (end > start) {
          range.setStart(node, start);
          range.setEnd(node, end);
          for (const r of range.getClientRects()) {
            if (r.height > 0) { cur[0] = Math.min(cur[0], r.top + sy); cur[1] = Math.max(cur[1], r.bottom + sy); }
          }
        }
        if (nl < 0) break;
        spans.push(cur[0] < 1e9 ? cur.map(Math.round).join(':') : '-1');
        cur = [1e9, -1e9];
        start = nl + 1;
      }
    }
    spans.push(cur[0] < 1e9 ? cur.map(Math.round).join(':') : '-1');
    pre.setAttribute('data-lt-lines', spans.join(','));
  }
  return document.documentElement.outerHTML;
}
"""

ANNOTATE_JS = ANNOTATE_JS.replace("__BLOCK_NAMES__", json.dumps(BLOCK_NAMES))

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

# Vertical extents of the visible leaf blocks (paragraphs, list items, table rows, code, headings, figures)
# and of the runs of inline content that other containers hold (a <div> of text and <br>s, the text beside a
# list item's nested list): where a tile should not be cut. A run goes to the tile of its first line whole,
# as the markdown converter places it, so a cut through it would leave its other lines unlabelled.
BLOCKS_JS = r"""
() => {
  const sy = window.scrollY, out = [];
  const visible = (el) => !el.checkVisibility || el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true});
  const sel = __LEAF_SELECTOR__;
  const leaves = new Set();
  for (const el of document.body.querySelectorAll(sel)) {
    // leaf blocks only: a definition or list item holding paragraphs spans them all and would leave no
    // place to cut between them
    if (el.querySelector(sel) || !visible(el)) continue;
    leaves.add(el);
    const r = el.getBoundingClientRect();
    if (r.height > 0) out.push([r.top + sy, r.bottom + sy]);
  }
  const BLOCKS = new Set(__BLOCK_NAMES__);
  const range = document.createRange();
  const push = (first, last) => {
    range.setStartBefore(first);
    range.setEndAfter(last);
    let top = Infinity, bottom = -Infinity;
    for (const r of range.getClientRects()) {
      if (r.height > 0 && r.width > 0) { top = Math.min(top, r.top); bottom = Math.max(bottom, r.bottom); }
    }
    if (bottom > top) out.push([top + sy, bottom + sy]);
  };
  // runs are what the converter cuts block containers' children into; a leaf block spans its own
  for (const el of [document.body, ...document.body.querySelectorAll(__BLOCK_SELECTOR__)]) {
    if (leaves.has(el) || el.closest('pre, svg, table') || !visible(el)) continue;
    let first = null, last = null, text = false;
    for (const node of [...el.childNodes, null]) {
      if (node && node.nodeType === 8) continue;  // a comment: not drawn, not a boundary
      const inline = node && (node.nodeType === 3 || (node.nodeType === 1 && !BLOCKS.has(node.localName)));
      if (inline) {
        if (first === null) first = node;
        last = node;
        text = text || node.nodeType === 1 || /\S/.test(node.nodeValue);
      } else {
        if (first !== null && text) push(first, last);
        first = last = null;
        text = false;
      }
    }
  }
  return out;
}
"""
for _name, _value in (
    ("__BLOCK_NAMES__", BLOCK_NAMES),
    ("__BLOCK_SELECTOR__", ", ".join(BLOCK_NAMES)),
    ("__LEAF_SELECTOR__", LEAF_SELECTOR),
):
    BLOCKS_JS = BLOCKS_JS.replace(_name, json.dumps(_value))


def tile_cuts(
    height: int, tile_h: int, min_h: int, blocks: list[list[float]], words: list[list]
) -> list[tuple[int, int]]:
    """Tiles `[(top, bottom)]` covering `[0, height)`, of at most `tile_h` px but the last, which takes a
    remaining sliver under `min_h` px. Each cut is the lowest y in the tile's lower half that crosses no
    block (else no text line; else the hard limit)."""
    # rounded alike, so blocks that touch leave the y between them free
    spans_blocks = sorted((round(a), round(b)) for a, b in blocks)
    spans_lines = sorted((round(w[2]), round(w[4])) for w in words)

    def free(y: int, spans) -> bool:
        return not any(a < y < b for a, b in spans)

    cuts, top = [], 0
    while top < height:
        limit = min(top + tile_h, height)
        bottom = limit
        if limit < height:
            for spans in (spans_blocks, spans_lines):
                inside = [(a, b) for a, b in spans if a < limit and b > top + tile_h // 2]
                y = next((y for y in range(limit, top + tile_h // 2, -1) if free(y, inside)), None)
                if y is not None:
                    bottom = y
                    break
        if bottom - top < min_h and cuts:  # a last sliver joins the tile above (its text is there)
            cuts[-1] = (cuts[-1][0], bottom)
            break
        cuts.append((top, bottom))
        top = bottom
    return cuts


class PageTimeout(Exception):
    pass


# Pictures: where the page draws images, graphics and embedded frames (text inside them is not the page's
# text, so labels leave it out and a reader of the labels knows where pictures are).
PICTURES_JS = r"""
() => {
  const sx = window.scrollX, sy = window.scrollY, out = [];
  for (const el of document.body.querySelectorAll('img, svg, canvas, video, picture, iframe, object, embed')) {
    if (el.closest('svg') !== el && el.closest('svg')) continue;  // only outermost svg
    if (el.checkVisibility && !el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})) continue;
    const r = el.getBoundingClientRect();
    if (r.width >= 2 && r.height >= 2) out.push([r.left + sx, r.top + sy, r.right + sx, r.bottom + sy]);
  }
  return out;
}
"""

# Installed before a page's own scripts: once the page is measured (`window.__literateFrozen`), the observers
# and resize/scroll listeners it set up are no longer called, so a capture (which lets Chromium lay the page
# out taller than the window for a moment) does not make it move, e.g. pin a sticky header that then changes
# its height.
FREEZE_JS = r"""
(() => {
  const frozen = () => window.__literateFrozen === true;
  for (const name of ['IntersectionObserver', 'ResizeObserver']) {
    const Original = window[name];
    if (!Original) continue;
    window[name] = class extends Original {
      constructor(callback, options) {
        super((...args) => { if (!frozen()) callback(...args); }, options);
      }
    };
  }
  const add = EventTarget.prototype.addEventListener, remove = EventTarget.prototype.removeEventListener;
  const wrapped = new WeakMap();
  const watched = (target, type, listener) =>
    (type === 'resize' || type === 'scroll') && (target === window || target === document) && listener;
  EventTarget.prototype.addEventListener = function (type, listener, options) {
    if (watched(this, type, listener)) {
      if (!wrapped.has(listener)) {
        wrapped.set(listener, function (...args) {
          if (frozen()) return;
          return typeof listener === 'function' ? listener.apply(this, args) : listener.handleEvent(...args);
        });
      }
      return add.call(this, type, wrapped.get(listener), options);
    }
    return add.call(this, type, listener, options);
  };
  EventTarget.prototype.removeEventListener = function (type, listener, options) {
    const inner = watched(this, type, listener) && wrapped.get(listener);
    return remove.call(this, type, inner || listener, options);
  };
})();
"""

# Where the page's content lies, cheaply: its height and the tops of up to 512 blocks spread over it. Equal
# before and after the capture, the tiles show the layout that was measured.
LAYOUT_JS = r"""
() => {
  const els = document.body ? document.body.querySelectorAll(__LEAF_SELECTOR__) : [];
  const out = [document.documentElement.scrollHeight], step = Math.max(1, Math.floor(els.length / 512));
  for (let i = 0; i < els.length; i += step) out.push(Math.round(els[i].getBoundingClientRect().top + window.scrollY));
  return out;
}
""".replace("__LEAF_SELECTOR__", json.dumps(LEAF_SELECTOR))

# One round trip once the page has loaded: open every <details> (a collapsed block would show only its
# summary, so its content is drawn and labelled instead), drop images that did not load (Chromium would draw
# their alt text, which is no text of the page), wait for fonts and two frames (observers the page set up
# run, e.g. a sticky header that changes its height), freeze the page's observers (`FREEZE_JS`), then the
# height, words, blocks, pictures, layout.
MEASURE_JS = f"""
async () => {{
  for (const d of document.querySelectorAll('details')) d.open = true;
  for (const img of document.images) if (img.complete && img.naturalWidth === 0) img.style.display = 'none';
  if (document.fonts) await document.fonts.ready;
  for (let i = 0; i < 2; i++) await new Promise((done) => requestAnimationFrame(done));
  window.__literateFrozen = true;
  const full = Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0);
  return [full, ({EXTRACT_WORDS_JS})(), ({BLOCKS_JS})(), ({PICTURES_JS})(), ({LAYOUT_JS})()];
}}
"""
# Attempts at measuring and capturing a page whose layout moves meanwhile (its scripts react to the capture).
LAYOUT_ATTEMPTS = 3


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


def _utf8_undeclared(data: bytes) -> bool:
    """Text that is valid UTF-8 and names no character set of its own in its first 1024 bytes."""
    if b"charset" in data[:1024].lower():
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
        self, target: str | Path | LocalDocument, cfg, with_html: bool = False, with_text: bool = False
    ) -> RenderedPage:
        """Load `target` (a URL, a local file or a `LocalDocument`) in a fresh context and cut it into
        tiles of `cfg.tile_height` px."""
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        local = None
        if isinstance(target, LocalDocument):
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
            context.route("**/*", lambda route: _guarded_route(route, cfg, local, blocked, budget))
            context.add_init_script(FREEZE_JS)
            page = context.new_page()
            page.on("console", lambda m: _console_refusal(m, blocked))
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


def _console_refusal(message, blocked: list[tuple[str, str]]) -> None:
    """Chromium refuses `file:` URLs from the document's origin before any request is made; it says so on
    the console, which is where they are counted."""
    if message.type == "error" and message.text.startswith(_LOCAL_RESOURCE):
        blocked.append(("blocked_file", message.text[len(_LOCAL_RESOURCE) :]))


def _guarded_route(route, cfg, local: LocalDocument | None, blocked: list, budget: dict) -> None:
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


def _route(route, cfg, local: LocalDocument | None, budget: dict) -> None:
    request = route.request
    url = request.url
    if local is not None and url.startswith(DOCUMENT_ORIGIN + "/"):
        body, kind = local.serve(url)
        route.fulfill(status=200, body=body, content_type=kind)
        return
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("data", "blob", "about"):
        route.continue_()
        return
    if cfg.network == "offline":
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


def words_to_lines(words: list[list]) -> list[dict]:
    """Words in DOM order → lines: a word joins the current line when it is in the same block box, sits on
    the same text row and follows closely; it attaches without a space when the DOM has none between."""
    lines: list[dict] = []
    cur = None
    for text, x0, y0, x1, y1, join, box, *_ in words:
        h = y1 - y0
        if cur is not None and cur["box"] == box:
            cy, ch = (cur["y0"] + cur["y1"]) / 2, cur["y1"] - cur["y0"]
            same_row = abs((y0 + y1) / 2 - cy) < 0.5 * min(h, ch)
            gap = x0 - cur["x1"]
            if same_row and -0.25 * h <= gap <= 1.5 * max(h, ch):
                cur["text"] += ("" if join and gap < 0.25 * h else " ") + text
                cur["x0"], cur["y0"] = min(cur["x0"], x0), min(cur["y0"], y0)
                cur["x1"], cur["y1"] = max(cur["x1"], x1), max(cur["y1"], y1)
                continue
        cur = {"text": text, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "box": box}
        lines.append(cur)
    return [{"text": ln["text"], "bbox": [ln["x0"], ln["y0"], ln["x1"], ln["y1"]]} for ln in lines]


def tile_pictures(pictures: list[list[float]], top: int, tile: Image.Image) -> list[list[int]]:
    """The pictures that show in the tile, in tile pixels, clipped to it."""
    out = []
    for x0, y0, x1, y1 in pictures:
        box = [
            max(0, round(x0)),
            max(0, round(y0 - top)),
            min(tile.width, round(x1)),
            min(tile.height, round(y1 - top)),
        ]
        if box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
            out.append(box)
    return out


def tile_lines(lines: list[dict], top: int, tile: Image.Image) -> list[dict]:
    """Lines whose vertical centre falls in the tile, in tile pixels, clipped to it."""
    out = []
    for ln in lines:
        x0, y0, x1, y1 = ln["bbox"]
        if not top <= (y0 + y1) / 2 < top + tile.height:
            continue
        box = [
            max(0.0, x0),
            max(0.0, y0 - top),
            min(float(tile.width), x1),
            min(float(tile.height), y1 - top),
        ]
        if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
            out.append({"text": ln["text"], "bbox": box})
    return out
