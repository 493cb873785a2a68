"""Split a document's markdown into pages by aligning its words with each page's PDF text (arXiv, DOCX).

Words of the markdown (math left out: its TeX never matches rendered glyphs) are aligned to the words of
the PDF pages in order with difflib; each markdown word takes the page of the PDF word it matched (runs of
three or more words only, kept monotonic). A paragraph whose words cross a page break is cut at the first
word of the next page; other blocks (headings, tables, lists, code, display math) go whole to one page.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections import Counter
from difflib import SequenceMatcher

_WORD = re.compile(r"\w+", re.UNICODE)
# a word broken at a line's end by a hyphen, its rest starting the next line in lower case
_HYPHENATED = re.compile(r"(\w)[-\u00ad\u2010]\n(?=[a-z])(\w)")
_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.DOTALL)
# Code fences and inline code spans, kept whole by `re.split` (odd items).
_CODE = re.compile(r"(```.*?```|`[^`\n]+`)", re.DOTALL)
_LIST_NUMBER = re.compile(r"^(?:\s*>)*\s*\d+[.)](?=\s)", re.MULTILINE)
_WHOLE_BLOCK = re.compile(r"^(#|\||```|\$\$|>|\s*[-*+] |\s*\d+[.)] )")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)]) ")
_TABLE_RULE = re.compile(r"^\|(?:\s*:?-+:?\s*\|)+\s*$")


def words(text: str) -> list[str]:
    """Lower-cased word tokens, compatibility forms folded (the ligature `ﬁ` reads `fi`, as typeset text
    and its source would have it)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return [w.lower() for w in _WORD.findall(text)]


def dehyphenate(text: str) -> str:
    """A PDF page's text with words hyphenated across lines joined (`pream-` / `ble`)."""
    return _HYPHENATED.sub(r"\1\2", text)


def page_words(text: str) -> list[str]:
    """The words of a PDF page's text, hyphenated words joined."""
    return words(dehyphenate(text))


def markdown_words(md: str, list_numbers: bool = True) -> list[str]:
    """The words a reader sees in rendered markdown, math excluded (dollar signs in code are code, not
    math). `list_numbers=False` leaves out ordered lists' numbers, which a browser draws as list markers,
    outside the page's text."""
    if "$" in md:
        md = "".join(part if i % 2 else _MATH.sub(" ", part) for i, part in enumerate(_CODE.split(md)))
    if not list_numbers:
        md = _LIST_NUMBER.sub(" ", md)
    return words(md)


def token_iou(a: list[str], b: list[str]) -> float:
    """Multiset IoU of two token lists (1.0 when both are empty)."""
    ca, cb = Counter(a), Counter(b)
    union = sum((ca | cb).values())
    return sum((ca & cb).values()) / union if union else 1.0


def token_recall(reference: list[str], candidate: list[str]) -> float:
    """Share of the reference's tokens (multiset) that the candidate holds."""
    cr = Counter(reference)
    total = sum(cr.values())
    return sum((cr & Counter(candidate)).values()) / total if total else 1.0


def _units(block: str) -> tuple[str, list[str]]:
    """A markdown block's kind and the pieces a page break may fall between: a code block's lines, a
    table's rows (header and separator as one), a list's lines, a quote's
    lines; a paragraph is one piece that may be cut between words; a heading or display math is whole."""
    lines = block.split("\n")
    if block.startswith("```") and len(lines) >= 2:
        return "code", lines[1:-1] if lines[-1].startswith("```") else lines[1:]
    if block.startswith("|"):
        head = "\n".join(lines[:2]) if len(lines) > 1 and _TABLE_RULE.match(lines[1]) else lines[0]
        return "table", [head, *lines[2 if head != lines[0] else 1 :]]
    if _LIST_ITEM.match(block):
        # between lines, an item's continuation lines too: an item that holds a code listing (a command
        # and its arguments) is often cut by the page break, and each line goes to the page that shows it
        return "list", lines
    if block.startswith(">"):
        return "quote", lines
    if _WHOLE_BLOCK.match(block):
        return "whole", [block]
    return "paragraph", [block]


def _join(kind: str, pieces: list[str], first: bool) -> str:
    """Pieces of one block that fall on one page, as markdown. A table continued from the page before
    takes its first row there as its header."""
    if kind == "code":
        return "```\n" + "\n".join(pieces) + "\n```"
    if kind == "table" and not first:
        width = pieces[0].count("|") - 1
        return "\n".join([pieces[0], "|" + "---|" * max(width, 1), *pieces[1:]])
    return ("\n" if kind in ("table", "list", "quote") else " ").join(pieces)


def split_markdown_by_pages(markdown: str, page_texts: list[str]) -> list[str]:
    """The markdown cut into one piece per page (a page can get an empty piece). Paragraphs are cut between
    words; code blocks, tables, lists and quotes between their lines, rows or items; headings and display
    math go whole."""
    blocks = [b for b in re.split(r"\n\s*\n", markdown.strip()) if b.strip()]
    units: list[tuple[int, str, str]] = []  # (block, kind, text)
    for bi, block in enumerate(blocks):
        kind, pieces = _units(block)
        units += [(bi, kind, piece) for piece in pieces]
    md_tokens: list[tuple[int, int, str]] = []  # (unit, char offset, word)
    for ui, (_, kind, text) in enumerate(units):
        masked = text if kind == "code" else _MATH.sub(lambda m: " " * len(m.group()), text)
        md_tokens += [(ui, m.start(), m.group().lower()) for m in _WORD.finditer(masked)]
    pdf_tokens, page_starts = [], []
    for text in page_texts:
        page_starts.append(len(pdf_tokens))
        pdf_tokens += page_words(text)
    n_pages = len(page_texts)
    if not md_tokens or not pdf_tokens:
        return [markdown if i == 0 else "" for i in range(n_pages)]

    labels: list[int | None] = [None] * len(md_tokens)
    matcher = SequenceMatcher(None, [t[2] for t in md_tokens], pdf_tokens, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        if size < 3:
            continue
        for k in range(size):
            labels[a + k] = bisect_right(page_starts, b + k) - 1
    # Unmatched words follow the page before them; the sequence of pages never goes back.
    current = next((lab for lab in labels if lab is not None), 0)
    for i, lab in enumerate(labels):
        current = max(current, lab) if lab is not None else current
        labels[i] = current

    by_unit: dict[int, list[tuple[int, int]]] = {}
    for (ui, off, _), lab in zip(md_tokens, labels, strict=True):
        by_unit.setdefault(ui, []).append((off, lab))
    placed: list[tuple[int, int, str, str]] = []  # (page, block, kind, text) in order
    last = 0
    for ui, (bi, kind, text) in enumerate(units):
        toks = by_unit.get(ui)
        if not toks:  # no words (a rule, pure math, a code line of symbols): with the page before it
            placed.append((last, bi, kind, text))
            continue
        if kind != "paragraph" or toks[0][1] == toks[-1][1]:
            page = max(Counter(lab for _, lab in toks).most_common(1)[0][0], last)
            placed.append((page, bi, kind, text))
            last = page
            continue
        start = 0
        for (off, lab), (_, prev) in zip(toks[1:], toks[:-1], strict=True):
            if lab != prev:
                placed.append((prev, bi, kind, text[start:off].strip()))
                start = off
        placed.append((toks[-1][1], bi, kind, text[start:].strip()))
        last = toks[-1][1]

    pages: list[list[str]] = [[] for _ in range(n_pages)]
    run: list[str] = []
    for i, (page, bi, kind, text) in enumerate(placed):
        run.append(text)
        following = placed[i + 1] if i + 1 < len(placed) else None
        if following is None or following[:2] != (page, bi):  # the end of this block's part on this page
            first = i + 1 == len(run) or placed[i - len(run)][1] != bi
            pages[page].append(_join(kind, run, first))
            run = []
    return ["\n\n".join(p for p in page if p.strip()) + ("\n" if page else "") for page in pages]
