"""Split a document's markdown into pages by aligning its words with each page's PDF text (arXiv, DOCX).

Words of the markdown (math left out: its TeX never matches rendered glyphs) are aligned to the words of
the PDF pages in order with difflib; each markdown word takes the page of the PDF word it matched (runs of
three or more words only, kept monotonic). A paragraph whose words cross a page break is cut at the first
word of the next page; other blocks (headings, tables, lists, code, display math) go whole to one page.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter
from difflib import SequenceMatcher

_WORD = re.compile(r"\w+", re.UNICODE)
_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.DOTALL)
# Code fences and inline code spans, kept whole by `re.split` (odd items).
_CODE = re.compile(r"(```.*?```|`[^`\n]+`)", re.DOTALL)
_LIST_NUMBER = re.compile(r"^(?:\s*>)*\s*\d+[.)](?=\s)", re.MULTILINE)
_WHOLE_BLOCK = re.compile(r"^(#|\||```|\$\$|>|\s*[-*+] |\s*\d+[.)] )")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


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


def split_markdown_by_pages(markdown: str, page_texts: list[str]) -> list[str]:
    """The markdown cut into one piece per page (a page can get an empty piece)."""
    blocks = [b for b in re.split(r"\n\s*\n", markdown.strip()) if b.strip()]
    md_tokens: list[tuple[int, int, str]] = []  # (block, char offset, word)
    for bi, block in enumerate(blocks):
        masked = _MATH.sub(lambda m: " " * len(m.group()), block)
        md_tokens += [(bi, m.start(), m.group().lower()) for m in _WORD.finditer(masked)]
    pdf_tokens, page_starts = [], []
    for text in page_texts:
        page_starts.append(len(pdf_tokens))
        pdf_tokens += words(text)
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

    pages: list[list[str]] = [[] for _ in range(n_pages)]
    by_block: dict[int, list[tuple[int, int]]] = {}
    for (bi, off, _), lab in zip(md_tokens, labels, strict=True):
        by_block.setdefault(bi, []).append((off, lab))
    last = 0
    for bi, block in enumerate(blocks):
        toks = by_block.get(bi)
        if not toks:  # a block without words (a rule, pure math) stays with the page before it
            pages[last].append(block)
            continue
        if _WHOLE_BLOCK.match(block) or toks[0][1] == toks[-1][1]:
            page = (
                Counter(lab for _, lab in toks).most_common(1)[0][0]
                if _WHOLE_BLOCK.match(block)
                else toks[0][1]
            )
            page = max(page, last)
            pages[page].append(block)
            last = page
            continue
        start = 0
        for (off, lab), (_, prev) in zip(toks[1:], toks[:-1], strict=True):
            if lab != prev:
                pages[prev].append(block[start:off].strip())
                start = off
        pages[toks[-1][1]].append(block[start:].strip())
        last = toks[-1][1]
    return ["\n\n".join(p for p in page if p) + ("\n" if page else "") for page in pages]
