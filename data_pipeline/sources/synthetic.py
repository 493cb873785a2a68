"""`synthetic` (the paper's v2 warm-up): text snippets (one per line of the input text files; made ones come from
`python -m data_pipeline.snippet_text`) drawn in random fonts (`fonts`: a folder of them, default the system's),
sizes, colours and backgrounds → layout samples with exact boxes. `mode=page` places `snippets_per_page` snippets
on a page; `mode=snippet` draws `lines_per_snippet` lines at a time in one image the size of the text, or of
`canvas`, so that text is large against the patch grid (see `render_snippet`). `fonts_split` draws from the
training or the held-out share of the font families. Deterministic: a page's look depends only on its document id, its
page number and the fonts (each page's `meta.json` names the font of each line); ship a `fonts` folder with a
cluster job so that every node draws alike."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.schema import Sample, Skip
from data_pipeline.snippet_text import SPLITS, split_items
from data_pipeline.synthetic import (
    FONT_ROOT,
    font_family,
    installed_fonts,
    render_snippet,
    render_snippets_page,
)

EXTENSIONS = (".txt",)


def _font_root(cfg) -> str:
    return str(cfg.get("fonts") or FONT_ROOT)


MODES = ("page", "snippet")


def check_config(cfg) -> None:
    """A `fonts` folder given must hold fonts (without one, a machine with none draws in Pillow's own); the
    mode, the lines per snippet, the font sizes, the padding and the canvas must be ones a page can be drawn
    with."""
    mode = cfg.get("mode", "page")
    if mode not in MODES:
        raise ValueError(f"source.mode={mode}: choose from {', '.join(MODES)}")
    if int(cfg.get("lines_per_snippet", 1)) < 1:
        raise ValueError(f"source.lines_per_snippet={cfg.get('lines_per_snippet')}: needs at least 1")
    low, high = _font_px(cfg)
    if not 4 <= low <= high:
        raise ValueError(f"source.font_px=[{low}, {high}]: needs 4 <= low <= high")
    pad_low, pad_high = _padding(cfg)
    if not 0 <= pad_low <= pad_high:
        raise ValueError(f"source.padding=[{pad_low}, {pad_high}]: needs 0 <= low <= high")
    canvas = _canvas(cfg)
    if canvas and min(canvas) < 8:
        raise ValueError(f"source.canvas={list(canvas)}: needs a width and height of at least 8 px")
    if cfg.get("max_aspect") is not None and float(cfg.get("max_aspect")) < 1:
        raise ValueError(
            f"source.max_aspect={cfg.get('max_aspect')}: needs at least 1 (width over height), or null"
        )
    if int(cfg.get("max_width", 1024)) < 8:
        raise ValueError(f"source.max_width={cfg.get('max_width')}: needs at least 8 px")
    if cfg.get("fonts_split", "all") not in SPLITS:
        raise ValueError(f"source.fonts_split={cfg.get('fonts_split')}: choose from {', '.join(SPLITS)}")
    if cfg.get("fonts") and not installed_fonts(_font_root(cfg)):
        raise ValueError(
            f"source.fonts={_font_root(cfg)}: no .ttf or .otf font there that draws Latin letters"
        )
    if installed_fonts(_font_root(cfg)) and not fonts_of(cfg):
        raise ValueError(
            f"source.font_names={cfg.get('font_names')}, source.fonts_excluded={cfg.get('fonts_excluded')}, "
            f"source.fonts_split={cfg.get('fonts_split')}: "
            f"no font of {_font_root(cfg)} left to draw with"
        )


def _font_px(cfg) -> tuple[int, int]:
    low, high = cfg.get("font_px") or (12, 48)
    return int(low), int(high)


def _padding(cfg) -> tuple[float, float]:
    low, high = cfg.get("padding") or (0.1, 0.5)
    return float(low), float(high)


def _canvas(cfg) -> tuple[int, int] | None:
    canvas = cfg.get("canvas")
    return (int(canvas[0]), int(canvas[1])) if canvas else None


def _named(path: str, names) -> bool:
    """Whether a font is one of `names`: its file name, its family, or a family whose name starts with the
    name's words ("CMU" names every family of Computer Modern Unicode: "CMU Serif", "CMU Sans Serif", ...)."""
    family = font_family(path)
    return any(n == Path(path).name or family == n or family.startswith(f"{n} ") for n in map(str, names))


def fonts_of(cfg) -> tuple[str, ...]:
    """The fonts drawn from: the folder's (those named in `font_names`, if given; none named in
    `fonts_excluded`), or their training or held-out share (`fonts_split`, by a hash of each font's family, so
    that no face of a held-out family is trained on)."""
    found = installed_fonts(_font_root(cfg))
    if cfg.get("font_names"):
        found = tuple(f for f in found if _named(f, cfg.get("font_names")))
    if cfg.get("fonts_excluded"):
        found = tuple(f for f in found if not _named(f, cfg.get("fonts_excluded")))
    fraction, split = float(cfg.get("fonts_held_out", 0.2)), cfg.get("fonts_split", "all")
    return tuple(split_items(found, fraction, split, name=font_family))


def draw_sample(
    texts: list[str], doc_id: str, page: int, origin: str, cfg, fonts: tuple[str, ...]
) -> Sample | Skip:
    """One sample of `texts` (a page of snippets, or one snippet of a few lines, by `cfg.mode`), drawn with a
    seed made of the document id and page number."""
    seed = int.from_bytes(hashlib.sha256(f"{doc_id}/{page}".encode()).digest()[:8], "little")
    if cfg.get("mode", "page") == "snippet":
        image, lines, used = render_snippet(
            texts,
            seed,
            fonts=fonts,
            font_px=_font_px(cfg),
            padding=_padding(cfg),
            max_width=int(cfg.get("max_width", 1024)),
            canvas=_canvas(cfg),
            max_aspect=float(cfg["max_aspect"]) if cfg.get("max_aspect") else None,
        )
    else:
        image, lines, used = render_snippets_page(texts, seed, fonts=fonts, font_px=_font_px(cfg))
    if not lines:
        return Skip("nothing_drawn", detail=f"{origin} page {page}")
    return Sample(
        "synthetic", doc_id, page, image, origin, lines=lines, meta={"render_seed": seed, "fonts": used}
    )


def build(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    snippets = [
        s.strip() for s in path.read_text(encoding="utf-8", errors="replace").splitlines() if s.strip()
    ]
    snippet_mode = cfg.get("mode", "page") == "snippet"
    per_page = int(cfg.get("lines_per_snippet", 1)) if snippet_mode else int(cfg.snippets_per_page)
    choices = fonts_of(cfg)
    for page, start in enumerate(range(0, len(snippets), per_page)):
        if page >= int(cfg.max_pages_per_doc):
            yield Skip("too_many_pages", pages=(len(snippets) - start + per_page - 1) // per_page)
            return
        yield draw_sample(snippets[start : start + per_page], doc_id, page, str(path), cfg, choices)
