"""`web` (layout): a web page rendered by Chromium, cut into page-sized tiles; each tile is a sample with
the visible text's line boxes. Local files render offline; URL lists online (robots.txt, byte caps); WARC
archives (`.warc`, `.warc.gz`) offline from the archive, each HTML page under its recorded URL with its
sub-resources answered from the same archive (`render/warc.py`; `source.warc_urls`: a URL list or CDX index
of the pages to render)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_pipeline.align import markdown_words, token_iou, words
from data_pipeline.render.browser import Browser, PageTimeout
from data_pipeline.render.html_markdown import tile_markdown
from data_pipeline.render.routing import ArchivedPage, LocalDocument
from data_pipeline.render.tiles import tile_lines, tile_pictures, words_to_lines
from data_pipeline.render.warc import EXTENSIONS as WARC_EXTENSIONS
from data_pipeline.render.warc import WarcArchive, is_warc, selected_urls
from data_pipeline.schema import DocumentError, Sample, Skip, clean_lines

EXTENSIONS = (".html", ".htm", ".xhtml", *WARC_EXTENSIONS)
REQUIRED_TOOLS = ("chromium",)


def browser_samples(
    path: str | Path | LocalDocument,
    doc_id: str,
    cfg,
    source: str,
    layout: bool,
    markdown: bool,
    origin: str | None = None,
) -> Iterator[Sample | Skip]:
    """Render a page and yield one sample per tile: layout lines (`layout`) and/or the markdown of what the
    tile shows (`markdown`, kept only when its words match the tile's visible text: token IoU >= md_min_iou)."""
    if isinstance(path, LocalDocument):
        target, url = path, str(path.path)
    elif isinstance(path, ArchivedPage) or (
        isinstance(path, str) and path.startswith(("http://", "https://"))
    ):
        target = url = path
    else:  # a file: served from its own folder only
        target = LocalDocument.of(path)
        url = target.path.as_uri()
    bcfg = cfg.browser
    try:
        page = Browser.shared().render(target, bcfg, with_html=markdown)
    except PageTimeout as e:
        raise DocumentError("page_timeout", str(e)) from e
    for reason, blocked in page.blocked:
        yield Skip(reason, pages=0, detail=blocked)
    if page.over_cap:
        yield Skip(
            "height_capped", pages=0, detail=f"{url}: {page.full_height} px > max_height={bcfg.max_height}"
        )
    lines = words_to_lines(page.words)
    for index, (top, tile) in enumerate(page.tiles):
        visible = clean_lines(tile_lines(lines, top, tile), tile.width, tile.height)
        if not visible:
            yield Skip("no_visible_text", detail=f"{url} tile {index}")
            continue
        sample = Sample(
            source,
            doc_id,
            index,
            tile,
            origin or url,
            lines=visible if layout else None,
            meta={"tile_top": top, "page_height": page.full_height},
        )
        pictures = tile_pictures(page.pictures, top, tile)
        if pictures:
            sample.meta["pictures"] = pictures
        if markdown:
            md = tile_markdown(page.html, top, top + tile.height)
            # Navigation and footers are visible but not content: the markdown leaves them out, so does this.
            content = tile_lines(words_to_lines([w for w in page.words if not w[7]]), top, tile)
            iou = token_iou(
                markdown_words(md, list_numbers=False), words(" ".join(ln["text"] for ln in content))
            )
            sample.meta["md_token_iou"] = round(iou, 3)
            sample.meta["md_edit_similarity"] = round(edit_similarity(md, content), 3)
            if iou < float(cfg.md_min_iou):
                yield Skip("md_consistency", detail=f"{url} tile {index}: token IoU {iou:.2f}")
                continue
            sample.md = md
        yield sample


def edit_similarity(md: str, lines: list[dict]) -> float:
    """Normalised Levenshtein similarity between the markdown's words and the tile's visible words."""
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.normalized_similarity(
        " ".join(markdown_words(md, list_numbers=False)),
        " ".join(words(" ".join(ln["text"] for ln in lines))),
    )


def page_samples(
    path, doc_id: str, cfg, source: str, layout: bool, markdown: bool
) -> Iterator[Sample | Skip]:
    """A page (file or URL) as `browser_samples` gives it, or every page of a WARC archive the URL list picks:
    one page that fails is counted, the archive's other pages go on."""
    if not is_warc(path):
        yield from browser_samples(path, doc_id, cfg, source, layout, markdown)
        return
    archive = WarcArchive(path)
    wanted = selected_urls(cfg.get("warc_urls"))
    pages = [url for url in archive.pages() if wanted is None or url in wanted]
    if not pages:
        yield Skip(
            "no_pages",
            detail=f"{path}: no HTML page answered 200" + (" that the URL list picks" if wanted else ""),
        )
    for url in pages:
        try:
            yield from browser_samples(ArchivedPage(archive, url), f"{doc_id}/{url.split('://', 1)[-1]}", cfg, source,
                                       layout, markdown, origin=url)  # fmt: skip
        except DocumentError as e:
            yield Skip(e.reason, detail=f"{path}: {url}: {e.detail}", error=True)


def build(path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    yield from page_samples(path, doc_id, cfg, "web", layout=True, markdown=False)
