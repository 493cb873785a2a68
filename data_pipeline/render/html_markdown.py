"""HTML → markdown: headings, paragraphs, nested lists, code blocks, tables as markdown tables, links as
their text, math as `$…$` / `$$…$$` (from MathML `alttext`, which LaTeXML and MathJax keep). Non-content
elements (scripts, styles, navigation, page headers/footers, hidden elements) are dropped."""

from __future__ import annotations

import re

import lxml.html

DROP_TAGS = {
    "script",
    "style",
    "noscript",
    "nav",
    "head",
    "template",
    "svg",
    "button",
    "form",
    "iframe",
    "object",
    "footer",
    "aside",
}
DROP_ROLES = {"navigation", "contentinfo", "search", "banner", "complementary"}
# LaTeXML's page furniture, and its ERROR elements: a macro it could not expand, written out as its name
# (the page shows what the macro made, not its name; the arguments after it stay).
DROP_CLASSES = ("ltx_page_footer", "ltx_page_header", "ltx_page_logo", "ltx_role_footer", "ltx_ERROR")
# Page chrome and controls: left out of the markdown, and (`render/browser.py`) not drawn in the pictures of
# markdown renders, so that a label and its image agree. Pictures (svg, iframe, object) stay drawn.
CHROME_SELECTOR = ", ".join(
    ["nav", "footer", "aside", "button", "form"]
    + [f"[role={role}]" for role in sorted(DROP_ROLES)]
    + [f".{name}" for name in DROP_CLASSES]
)
BLOCK_TAGS = {
    "p",
    "div",
    "section",
    "article",
    "main",
    "figure",
    "figcaption",
    "header",
    "footer",
    "aside",
    "address",
    "dl",
    "dt",
    "dd",
    "center",
    "details",
    "summary",
    "hgroup",
    "fieldset",
    "legend",
    "menu",
    "body",
    "html",
}
_SPACES = re.compile(r"[ \t\r\f\v\n]+")
_ITEM_MARK = re.compile(r"^(?:[•◦▪‣∙·-]|\d+[.)])(?:\s+|$)")
_OWN_NUMBER = re.compile(r"^(\d+)([.)])(?=\s)")


def code_span(text: str) -> str:
    """`text` as inline code: fenced with one more backtick than its longest run of them."""
    if not text:
        return ""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _classes(el) -> str:
    return el.get("class") or ""


def _dropped_class(el) -> bool:
    classes = _classes(el).split()
    return any(c in classes for c in DROP_CLASSES)


def _hidden(el) -> bool:
    style = (el.get("style") or "").replace(" ", "").lower()
    return (
        el.get("hidden") is not None
        or el.get("aria-hidden") == "true"
        or "display:none" in style
        or "visibility:hidden" in style
        or el.get("data-lt-hidden") is not None
    )


def _shown_text(el) -> str:
    """The text of `el` without what is not drawn: hidden descendants and controls (a code block's copy
    button, the variant of an example that a toggle hides); their tails are drawn."""
    parts = [el.text or ""]
    for child in el:
        tag = _tag(child)
        if tag is not None and tag not in DROP_TAGS and tag not in ("button", "input") and not _hidden(child):
            parts.append(_shown_text(child))
        parts.append(child.tail or "")
    return "".join(parts)


# TeX's spacing and box primitives: how a logo was typeset (`\\kern-3.5pt\\lower 2.15pt\\hbox{$T$}`), not math
# a reader sees. Dropped, boxes unwrapped, so the formula keeps only what is drawn.
_TEX_SPACING = re.compile(
    r"\\(?:kern|mkern|lower|raise|hskip|vskip|moveleft|moveright)\s*-?\s*[\d.]+\s*(?:pt|em|ex|mu|bp|sp|mm|cm|in)?"
)
_TEX_BOX = re.compile(r"\\[hv]box\s*\{\$?([^{}$]*)\$?\}")


def _math(el) -> tuple[str, bool]:
    annotation = [
        a for a in el.iter("{*}annotation", "annotation") if a.get("encoding") == "application/x-tex"
    ]
    tex = el.get("alttext") or (
        annotation[0].text if annotation and annotation[0].text else " ".join(el.itertext())
    )
    tex = _TEX_BOX.sub(lambda m: f" {m.group(1)} ", _TEX_SPACING.sub(" ", tex))
    return " ".join(tex.split()), el.get("display") == "block"


# Elements that are blocks of their own (the rest is inline content). The browser's annotation uses the same
# list (`BLOCK_NAMES`), so that both cut a container's children into the same runs of inline content.
_BLOCKISH = BLOCK_TAGS | {
    "p",
    "table",
    "ul",
    "ol",
    "li",
    "pre",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
}
BLOCK_NAMES = sorted(_BLOCKISH)


def _tag(el) -> str | None:
    return el.tag.lower().split("}")[-1] if isinstance(el.tag, str) else None


class _Converter:
    """Walks an element tree and collects markdown blocks. With a `window` (a tile's vertical range in page
    pixels, for pages annotated by `render/browser.py`), only what is drawn inside it is converted: blocks
    and runs of inline text by the middle of their first line, code blocks line by line, tables row by
    row, lists item by item."""

    def __init__(self, window: tuple[int, int] | None = None):
        self.blocks: list[str] = []
        self.window = window

    def at(self, y: str | None) -> bool:
        """Whether content whose first line is drawn at `y` belongs to the window."""
        if self.window is None:
            return True
        return y is not None and y.lstrip("-").isdigit() and self.window[0] <= int(y) < self.window[1]

    def keep(self, el) -> bool:
        return self.at(el.get("data-lt-y")) if self.window is not None else True

    def inline(self, el) -> str:
        """Inline content of `el` as one string, white space collapsed (newlines only from `<br>`)."""
        return _collapse(self._inline(el.text, list(el)))

    def _inline(self, lead: str | None, children: list) -> str:
        # Source line breaks are spaces; only <br> breaks a line.
        parts: list[str] = [(lead or "").replace("\n", " ")]
        for child in children:
            tail = (child.tail or "").replace("\n", " ")
            tag = _tag(child)
            if tag is None or tag in DROP_TAGS or _hidden(child) or _dropped_class(child):
                # an unexpanded macro most often drew something between words (`forth\mdash but`)
                parts.append((" " if "ltx_ERROR" in _classes(child) else "") + tail)
                continue
            if tag == "math":
                tex, block = _math(child)
                parts.append(f"$${tex}$$" if block else f"${tex}$")
            elif tag == "br":
                parts.append("\n")
            elif tag == "code":
                parts.append(code_span(" ".join("".join(child.itertext()).split())))
            elif tag in ("em", "i", "strong", "b"):
                # The delimiters go right around the text, as the page shows it: `**HTTP/2**,` not
                # `**HTTP/2** ,`; white space inside the element moves outside them.
                raw = self._inline(child.text, list(child))
                inner = _collapse(raw)
                mark = "*" if tag in ("em", "i") else "**"
                lead_space = " " if raw[:1].isspace() else ""
                trail = " " if raw[-1:].isspace() else ""
                parts.append(f"{lead_space}{mark}{inner}{mark}{trail}" if inner else raw)
            elif tag == "img":
                pass  # an image shows a picture, not its alt text
            else:
                parts.append(self._inline(child.text, list(child)))
            parts.append(tail)
        return "".join(parts)

    def emit(self, text: str) -> None:
        if text.strip():
            self.blocks.append(text.strip("\n"))

    def pre(self, el) -> None:
        code = _shown_text(el)
        if self.window is not None and el.get("data-lt-lines"):
            # A code block cut by a tile: the lines drawn inside the window (by their middle).
            lines = code.split("\n")
            spans = el.get("data-lt-lines").split(",")
            if len(spans) != len(lines):  # a parser dropped the newline after <pre>: align from the end
                spans = (["-1"] * len(lines) + spans)[-len(lines) :]
            kept, inside = [], False
            for line, span in zip(lines, spans, strict=True):
                if span != "-1":
                    top, bottom = (int(v) for v in span.split(":"))
                    inside = self.window[0] <= (top + bottom) / 2 < self.window[1]
                if inside:  # an empty line goes with the line before it
                    kept.append(line)
            code = "\n".join(kept)
        elif not self.keep(el):
            return
        code = code.strip("\n")
        if code.strip():
            self.emit(f"```\n{code}\n```")

    def table(self, el) -> None:
        rows = []
        for tr in el.iter("tr"):
            if not self.keep(tr):  # a table cut between tiles: each tile gets its rows
                continue
            cells = [
                self.inline(c).replace("\n", " ").replace("|", "\\|")
                for c in tr
                if _tag(c) in ("td", "th") and not _hidden(c)
            ]
            if cells:
                rows.append(cells)
        if not rows:
            return
        width = max(len(r) for r in rows)
        rows = [r + [""] * (width - len(r)) for r in rows]
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * width] + [
            "| " + " | ".join(r) + " |" for r in rows[1:]
        ]
        self.emit("\n".join(lines))

    def listing(self, el) -> str:
        """A list as markdown: each item's marker, its inline text, and its blocks (paragraphs, code,
        nested lists) indented under it. An item whose first line is outside the window (it began in the
        tile above) gives its blocks inside the window without a marker."""
        out = []
        ordered = _tag(el) == "ol"
        start = el.get("start")
        n = int(start) if ordered and start and start.lstrip("-").isdigit() else 1
        for li in el:
            if _tag(li) != "li" or _hidden(li):
                continue
            marker = f"{n}." if ordered else "-"
            n += 1
            item = _Converter(self.window)
            item.mixed(li)
            if not item.blocks:
                continue
            indent = " " * (len(marker) + 1)
            blocks = list(item.blocks)
            if self.keep(li):
                first = blocks.pop(0)
                if any("ltx_tag" in (e.get("class") or "") for e in li.iter() if isinstance(e.tag, str)):
                    # LaTeXML puts the item marker (•, 1.) in a tag span: drop a leading copy of it.
                    first = _ITEM_MARK.sub("", first)
                else:  # an item's own text that begins like a marker ("1. Install") stays text
                    first = _OWN_NUMBER.sub(r"\1\\\2", first)
                if not first and blocks:
                    first = blocks.pop(0)
                lines = [f"{marker} " + first.replace("\n", "\n" + indent)]
            else:
                lines = []
            for block in blocks:
                lines.append("\n".join(indent + line if line else line for line in block.split("\n")))
            out.append("\n".join(lines))
        return "\n".join(out)

    def mixed(self, el) -> None:
        """The children of a container: runs of inline content (text and inline elements between block
        children) as paragraphs, block children walked in between. A run is placed by the middle of its
        first line (`data-lt-runs`, one y a run), else by the container's."""
        items: list = []  # ("run", lead text, inline children) or ("block", element)
        lead, kids, open_run = el.text, [], el.text is not None
        for child in el:
            if _tag(child) in _BLOCKISH:
                if open_run:
                    items.append(("run", lead, kids))
                items.append(("block", child))
                lead, kids, open_run = child.tail, [], child.tail is not None
            else:
                kids.append(child)
                open_run = True
        if open_run:
            items.append(("run", lead, kids))
        runs = (el.get("data-lt-runs") or "").split(",")
        n_runs = sum(1 for item in items if item[0] == "run")
        aligned = len(runs) == n_runs and el.get("data-lt-runs") is not None
        k = 0
        for item in items:
            if item[0] == "block":
                self.walk(item[1])
                continue
            y = runs[k] if aligned else el.get("data-lt-y")
            k += 1
            if self.at(y):
                self.emit(_collapse(self._inline(item[1], item[2])))

    def walk(self, el) -> None:
        tag = _tag(el)
        if (
            tag is None
            or tag in DROP_TAGS
            or _hidden(el)
            or _dropped_class(el)
            or el.get("role") in DROP_ROLES
        ):
            return
        if tag == "pre":
            self.pre(el)
        elif tag in ("ul", "ol"):
            self.emit(self.listing(el))
        elif tag == "table":
            if "ltx_equation" in _classes(el):  # LaTeXML lays display equations out as tables
                if self.keep(el):
                    maths = [_math(m)[0] for m in el.iter("{*}math", "math")]
                    self.emit("\n".join(f"$${m}$$" for m in maths))
            else:
                self.table(el)
        elif tag == "blockquote":
            inner = _Converter(self.window)  # a quote cut by a tile keeps its tile's part
            inner.mixed(el)
            self.emit("\n".join(("> " + line).rstrip() for b in inner.blocks for line in b.split("\n")))
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            if self.keep(el):
                self.emit("#" * int(tag[1]) + " " + self.inline(el).replace("\n", " "))
        elif tag == "math":
            if self.keep(el):
                self.emit(f"$${_math(el)[0]}$$")
        elif _has_blocks(el):  # a container (or an inline element holding blocks): its children
            self.mixed(el)
        elif self.keep(el):
            self.emit(self.inline(el))


def _collapse(text: str) -> str:
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n")).strip()


def _has_blocks(el) -> bool:
    return any(_tag(c) in _BLOCKISH for c in el.iterdescendants())


def html_to_markdown(html: str | bytes) -> str:
    """Markdown of an HTML document's content (body)."""
    doc = lxml.html.document_fromstring(html)
    body = doc.find("body") if doc.find("body") is not None else doc
    conv = _Converter()
    conv.walk(body)
    return "\n\n".join(conv.blocks) + "\n"


def tile_markdown(annotated_html: str, top: int, bottom: int) -> str:
    """Markdown of the blocks that start inside `[top, bottom)` of a page whose elements carry
    `data-lt-y`, the middle of their first line of text (see `render/browser.py`); hidden elements are
    left out."""
    doc = lxml.html.document_fromstring(annotated_html)
    body = doc.find("body") if doc.find("body") is not None else doc

    conv = _Converter(window=(top, bottom))
    conv.walk(body)
    return "\n\n".join(conv.blocks) + ("\n" if conv.blocks else "")
