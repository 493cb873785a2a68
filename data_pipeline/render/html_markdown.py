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
DROP_CLASSES = ("ltx_page_footer", "ltx_page_header", "ltx_page_logo", "ltx_role_footer")
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


def _hidden(el) -> bool:
    style = (el.get("style") or "").replace(" ", "").lower()
    return (
        el.get("hidden") is not None
        or el.get("aria-hidden") == "true"
        or "display:none" in style
        or "visibility:hidden" in style
        or el.get("data-lt-hidden") is not None
    )


def _math(el) -> tuple[str, bool]:
    annotation = [
        a for a in el.iter("{*}annotation", "annotation") if a.get("encoding") == "application/x-tex"
    ]
    tex = el.get("alttext") or (
        annotation[0].text if annotation and annotation[0].text else " ".join(el.itertext())
    )
    return " ".join(tex.split()), el.get("display") == "block"


class _Converter:
    def __init__(self, keep=None, window: tuple[int, int] | None = None):
        self.blocks: list[str] = []
        # the page's vertical range being converted (tiles): a code block taller than it is cut by lines
        self.window = window
        # keep(element) -> bool: which leaf blocks (and list items) to emit, e.g. those inside one tile
        self.keep = keep or (lambda el: True)

    def inline(self, el) -> str:
        """Inline content of `el` as one string, white space collapsed (newlines only from `<br>`)."""
        text = self._inline(el)
        return "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n")).strip()

    def _inline(self, el) -> str:
        # Source line breaks are spaces; only <br> breaks a line.
        parts: list[str] = [(el.text or "").replace("\n", " ")]
        for child in el:
            tail = (child.tail or "").replace("\n", " ")
            if not isinstance(child.tag, str) or child.tag in DROP_TAGS or _hidden(child):
                parts.append(tail)
                continue
            tag = child.tag.lower()
            if tag == "math" or tag.endswith("}math"):
                tex, block = _math(child)
                parts.append(f"$${tex}$$" if block else f"${tex}$")
            elif tag == "br":
                parts.append("\n")
            elif tag == "code":
                parts.append(code_span(" ".join("".join(child.itertext()).split())))
            elif tag in ("em", "i", "strong", "b"):
                # The delimiters go right around the text, as the page shows it: `**HTTP/2**,` not
                # `**HTTP/2** ,`; white space inside the element moves outside them.
                raw = self._inline(child)
                inner = self.inline(child)
                mark = "*" if tag in ("em", "i") else "**"
                lead = " " if raw[:1].isspace() else ""
                trail = " " if raw[-1:].isspace() else ""
                parts.append(f"{lead}{mark}{inner}{mark}{trail}" if inner else raw)
            elif tag == "img":
                pass  # an image shows a picture, not its alt text
            else:
                parts.append(self._inline(child))
            parts.append(tail)
        return "".join(parts)

    def emit(self, text: str) -> None:
        if text.strip():
            self.blocks.append(text.strip("\n"))

    def pre(self, el) -> None:
        code = "".join(el.itertext())
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
            code = "\n".join(kept).strip("\n")
            if not code.strip():
                return
        elif not self.keep(el):
            return
        self.emit(f"```\n{code.strip(chr(10))}\n```")

    def table(self, el) -> None:
        rows = []
        for tr in el.iter("tr"):
            if not self.keep(tr):  # a table cut between tiles: each tile gets its rows
                continue
            cells = [
                self.inline(c).replace("\n", " ").replace("|", "\\|")
                for c in tr
                if isinstance(c.tag, str) and c.tag in ("td", "th")
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

    def listing(self, el, depth: int = 0) -> list[str]:
        out = []
        ordered = el.tag == "ol"
        n = 0
        for li in el:
            if not isinstance(li.tag, str) or li.tag != "li" or _hidden(li):
                continue
            if not self.keep(li):
                for c in li:
                    if isinstance(c.tag, str) and c.tag in ("ul", "ol"):
                        out.extend(self.listing(c, depth + 1))
                continue
            n += 1
            nested = [c for c in li if isinstance(c.tag, str) and c.tag in ("ul", "ol")]
            for c in nested:
                li.remove(c)
            marker = f"{n}." if ordered else "-"
            text = self.inline(li).replace("\n", " ")
            # LaTeXML puts the item marker (•, 1.) in a tag span: drop a leading copy of it.
            text = re.sub(r"^(?:[•◦▪‣∙·-]|\d+[.)])\s+", "", text)
            out.append(f"{'  ' * depth}{marker} {text}")
            for c in nested:
                out.extend(self.listing(c, depth + 1))
        return out

    def walk(self, el) -> None:
        if not isinstance(el.tag, str):
            return
        tag = el.tag.lower().split("}")[-1]
        if (
            tag in DROP_TAGS
            or _hidden(el)
            or any(c in _classes(el) for c in DROP_CLASSES)
            or el.get("role") in DROP_ROLES
        ):
            return
        if tag == "pre":
            self.pre(el)
            return
        container = tag in ("ul", "ol", "blockquote", "table") or (
            (tag in BLOCK_TAGS or tag == "span") and _has_blocks(el)
        )
        if not container and not self.keep(el):
            return
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.emit("#" * int(tag[1]) + " " + self.inline(el).replace("\n", " "))
        elif tag == "p":
            self.emit(self.inline(el))
        elif tag in ("ul", "ol"):
            self.emit("\n".join(self.listing(el)))
        elif tag == "table":
            if "ltx_equation" in _classes(el):  # LaTeXML lays display equations out as tables
                maths = [_math(m)[0] for m in el.iter("{*}math", "math")]
                self.emit("\n".join(f"$${m}$$" for m in maths))
            else:
                self.table(el)
        elif tag == "math":
            tex, _ = _math(el)
            self.emit(f"$${tex}$$")
        elif tag == "blockquote":
            inner = _Converter(self.keep, self.window)  # a quote cut by a tile keeps its tile's part
            for child in el:
                inner.walk(child)
            self.emit("\n".join("> " + line for b in inner.blocks for line in b.split("\n")))
        elif tag in BLOCK_TAGS and not _has_blocks(el):
            self.emit(self.inline(el))
        elif tag in BLOCK_TAGS or (tag == "span" and _has_blocks(el)):
            own = self.keep(el)
            if own and el.text and el.text.strip():
                self.emit(_SPACES.sub(" ", el.text).strip())
            for child in el:
                self.walk(child)
                if own and child.tail and child.tail.strip():
                    self.emit(_SPACES.sub(" ", child.tail).strip())
        else:
            self.emit(self.inline(el))


_BLOCKISH = BLOCK_TAGS | {"p", "table", "ul", "ol", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote"}


def _has_blocks(el) -> bool:
    return any(isinstance(c.tag, str) and c.tag in _BLOCKISH for c in el.iterdescendants())


def html_to_markdown(html: str | bytes) -> str:
    """Markdown of an HTML document's content (body)."""
    doc = lxml.html.document_fromstring(html)
    body = doc.find("body") if doc.find("body") is not None else doc
    conv = _Converter()
    conv.walk(body)
    return "\n\n".join(conv.blocks) + "\n"


def tile_markdown(annotated_html: str, top: int, bottom: int) -> str:
    """Markdown of the blocks that start inside `[top, bottom)` of a page whose elements carry
    `data-lt-top` (see `render/browser.py`); hidden elements are left out."""
    doc = lxml.html.document_fromstring(annotated_html)
    body = doc.find("body") if doc.find("body") is not None else doc

    def inside(el) -> bool:
        y = el.get("data-lt-top")
        return y is not None and top <= int(y) < bottom

    conv = _Converter(keep=inside, window=(top, bottom))
    conv.walk(body)
    return "\n\n".join(conv.blocks) + ("\n" if conv.blocks else "")
