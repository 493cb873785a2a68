"""`arxiv`: a paper's PDF beside its LaTeX source → layout samples from the PDF, and markdown per page.

Pairs are found by name, as arXiv's bulk data ships them: `X.pdf` with `X/` (a folder), `X.tar.gz`, `X.tgz`,
`X.tar` or `X.gz` (one gzipped .tex), or as TeX Live's documentation ships them: one file `X.tex`, `X.tex.gz`
or `X.ltx` whose folder is searched for what it inputs. LaTeX → HTML with LaTeXML (as Nougat and the paper
do; run again with the document's own class and packages when macros stay unexpanded, the conversion that
matches the PDF better kept; pandoc when LaTeXML fails) → markdown → cut into pages by aligning with each
page's PDF text. Macro names LaTeXML could not expand never reach a label: each is replaced by a space and
counted as `latex_macros_dropped`. A page whose markdown matches its PDF text poorly (token IoU below
`md_min_iou`, 0.95 as in the paper) keeps its layout sample but loses its markdown, counted as `md_alignment`;
a conversion that fails keeps every page's layout.
"""

from __future__ import annotations

import gzip
import re
import shutil
import tarfile
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.align import dehyphenate, markdown_words, page_words, split_markdown_by_pages, token_iou
from data_pipeline.render import sandbox
from data_pipeline.render.html_markdown import html_to_markdown
from data_pipeline.render.pdf import open_pdf
from data_pipeline.schema import DocumentError, Sample, Skip
from data_pipeline.sources import arxiv_bulk
from data_pipeline.sources.pdf import pdf_samples

EXTENSIONS = (
    ".pdf",
    ".tar",
)  # .tar: arXiv's bulk tars (`sources/arxiv_bulk.py`), or a paper's source archive
# Beside `X.pdf`: a folder `X/`, an archive, arXiv's single gzipped file `X.gz`, or one LaTeX file (as
# TeX Live's documentation ships them: `X.tex`, `X.tex.gz`, `X.ltx`), which may input its neighbours.
SOURCE_SUFFIXES = ("", ".tar.gz", ".tgz", ".tar", ".gz", ".tex", ".tex.gz", ".ltx")
SINGLE_FILE = (".tex", ".tex.gz", ".ltx")
MAIN_NAMES = ("main.tex", "ms.tex", "paper.tex", "article.tex")
# Whole-document token IoU with the PDF's words: under POOR_MATCH pandoc is tried as well; under NO_MATCH
# no conversion holds the document (LaTeXML's fatal errors leave an empty one) and it counts as failed.
POOR_MATCH = 0.5
NO_MATCH = 0.1
_UNDEFINED = re.compile(r'class="ltx_ERROR undefined">(\\[^<\s]+)<')


# Commands that read (or write) a file named by their argument; an absolute path, `~` or a `..` out of the
# source's folder names a file that is not the document's. The sandbox refuses them; they are counted.
_PATH_COMMAND = re.compile(
    r"\\(input|include|includegraphics|lstinputlisting|verbatiminput|VerbatimInput|includepdf|includeonly|"
    r"InputIfFileExists|IfFileExists|import|subimport|bibliography|addbibresource|openin|openout)"
    r"(?:\s*\d+\s*=?|\s*\[[^\]]*\])*\s*(?:\{\s*([^}]*)\}|([^\s{}\\%]+))"
)
_SOURCE_TEXT = (".tex", ".ltx", ".sty", ".cls", ".bib", ".bbl", ".def", ".cfg")


def outside_references(src: Path) -> list[str]:
    """`command path` of every file reference in the LaTeX source that points outside its folder."""
    found = []
    for name, text in _source_texts(src):
        for m in _PATH_COMMAND.finditer(text):
            for target in (m.group(2) or m.group(3) or "").split(","):
                target = target.strip()
                if target.startswith(("/", "~")) or ".." in Path(target).parts:
                    found.append(f"{name}: \\{m.group(1)} {target}")
    return found


def _source_texts(src: Path) -> Iterator[tuple[str, str]]:
    """(name, text) of the source's TeX files, without extracting an archive."""
    try:
        if src.is_dir():
            for f in sorted(src.rglob("*")):
                if f.is_file() and f.suffix in _SOURCE_TEXT:
                    yield str(f.relative_to(src)), f.read_text(errors="replace")
        elif src.name.endswith(SINGLE_FILE) or not tarfile.is_tarfile(src):
            raw = src.read_bytes()
            if src.name.endswith(".gz"):
                raw = gzip.decompress(raw)
            yield src.name.removesuffix(".gz"), raw.decode("utf-8", "replace")
        else:
            with tarfile.open(src) as tar:
                for member in tar:
                    if member.isfile() and Path(member.name).suffix in _SOURCE_TEXT:
                        yield member.name, tar.extractfile(member).read().decode("utf-8", "replace")
    except (OSError, EOFError, tarfile.TarError):
        return  # a broken source is reported by the conversion


_MACRO = re.compile(r"\\[A-Za-z@]+")
# Math and code in a label are LaTeX or code by design; macro names outside them must be on the page.
_MATH_OR_CODE = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$|```.*?```|`[^`\n]+`", re.DOTALL)


def macros_not_shown(md: str, page_text: str) -> list[str]:
    """Macro names in the markdown, outside math and code, that the page's text does not show (the text
    layer may write a space after the backslash, and ligatures)."""
    text = re.sub(r"\\\s+(?=[A-Za-z@])", r"\\", unicodedata.normalize("NFKC", dehyphenate(page_text)))
    shown = set(_MACRO.findall(text))
    return [m for m in _MACRO.findall(_MATH_OR_CODE.sub(" ", md)) if m not in shown]


def check_config(cfg) -> None:
    if not (shutil.which("latexmlc") or shutil.which("pandoc")):
        raise ValueError("source=arxiv needs latexmlc (Debian latexml) or pandoc on PATH")


def find_source(pdf: Path) -> Path | None:
    for suffix in SOURCE_SUFFIXES:
        candidate = pdf.with_name(pdf.stem + suffix)
        if candidate != pdf and candidate.exists() and (suffix or candidate.is_dir()):
            return candidate
    return None


def unpack_source(src: Path, into: Path) -> Path:
    """A folder holding the LaTeX source (extracted from an archive when needed)."""
    if src.is_dir():
        return src
    if src.name.endswith(SINGLE_FILE):
        into.mkdir(parents=True, exist_ok=True)
        name = src.name.removesuffix(".gz")
        raw = src.read_bytes()
        try:
            (into / name).write_bytes(gzip.decompress(raw) if src.name.endswith(".gz") else raw)
        except (OSError, EOFError) as e:
            raise DocumentError("bad_latex_source", f"{src}: {e}") from e
        return into
    if tarfile.is_tarfile(src):
        with tarfile.open(src) as tar:
            tar.extractall(into, filter="data")  # no absolute paths, no links out of the folder
        return into
    try:
        (into / "main.tex").write_bytes(gzip.decompress(src.read_bytes()))
    except (OSError, EOFError) as e:
        raise DocumentError("bad_latex_source", f"{src}: {e}") from e
    return into


def main_tex(folder: Path) -> Path:
    candidates = [
        p
        for p in folder.rglob("*")
        if p.suffix in (".tex", ".ltx") and "\\documentclass" in p.read_text(errors="replace")
    ]
    if not candidates:
        raise DocumentError("no_main_tex", f"{folder}: no .tex file with \\documentclass")
    named = [p for p in candidates if p.name in MAIN_NAMES]
    return (named or sorted(candidates, key=lambda p: -p.stat().st_size))[0]


def latexml_html(tex: Path, work: Path, timeout: float, search: Path | None, styles: bool) -> str | None:
    """LaTeXML's HTML of `tex`, or None. `styles`: let it read the raw class and package files (the
    document's and TeX Live's) for what it has no definitions of; more macros expand, but some documents
    then convert worse."""
    out = work / ("latexml-styles.html" if styles else "latexml.html")
    r = sandbox.run(
        [
            "latexmlc",
            f"--dest={out}",
            f"--log={out.with_suffix('.log')}",  # not beside the source: its folder is read-only
            "--format=html5",
            "--nocomments",
            "--quiet",
            *(["--includestyles"] if styles else []),
            f"--timeout={int(timeout)}",
            *([f"--path={search}"] if search else []),
            tex.name,
        ],
        read=[tex.parent, *([search] if search else [])],
        write=[work],
        cwd=tex.parent,
        timeout=timeout + 10,
    )
    if r is None or not out.exists() or out.stat().st_size == 0:
        return None
    return out.read_text(errors="replace")


def undefined_macros(html: str) -> Counter:
    """The macros LaTeXML could not expand (it writes each as an ERROR element holding its name)."""
    return Counter(_UNDEFINED.findall(html))


def document_markdown(src: Path, timeout: float, pdf_words: list[str]) -> tuple[str, str, Counter]:
    """(markdown, converter, macros left unexpanded) of a paper's LaTeX source. LaTeXML first; when it leaves
    macros unexpanded, again with the document's own class and packages read, and the conversion whose
    markdown matches the PDF's words better is kept; pandoc too when LaTeXML gives nothing or a document that
    hardly matches the PDF. No conversion that matches at all: `latex_conversion_failed`. Unexpanded macros'
    names never reach the markdown (`render/html_markdown.py` drops them); they are counted."""
    with tempfile.TemporaryDirectory(prefix="literate-arxiv-") as tmp:
        folder = unpack_source(src, Path(tmp) / "src")
        search = src.parent if src.name.endswith(SINGLE_FILE) else None
        tex = main_tex(folder)
        candidates: list[tuple[str, str]] = []
        if shutil.which("latexmlc"):
            html = latexml_html(tex, Path(tmp), timeout, search, styles=False)
            if html is not None:
                candidates.append((html, "latexml"))
            if html is None or undefined_macros(html):
                styled = latexml_html(tex, Path(tmp), timeout, search, styles=True)
                if styled is not None:
                    candidates.append((styled, "latexml+styles"))
        scored = [_scored(html, name, pdf_words) for html, name in candidates]
        # LaTeXML gave nothing, or a document that hardly matches the PDF (a fatal error leaves an empty one)
        if max((c[0] for c in scored), default=0.0) < POOR_MATCH and shutil.which("pandoc"):
            r = sandbox.run(
                ["pandoc", "-f", "latex", "-t", "html5", "--mathml", tex.name],
                read=[tex.parent, *([search] if search else [])],
                write=[Path(tmp)],
                cwd=tex.parent,
                timeout=timeout,
            )
            if r is not None and r.returncode == 0 and r.stdout:
                scored.append(_scored(r.stdout.decode(errors="replace"), "pandoc", pdf_words))
    if not scored:
        raise DocumentError("latex_conversion_failed", f"{src}: neither LaTeXML nor pandoc produced HTML")
    iou, markdown, converter, html = max(scored, key=lambda c: c[0])
    if iou < NO_MATCH:
        raise DocumentError(
            "latex_conversion_failed",
            f"{src}: the best conversion ({converter}) matches the PDF's words at token IoU {iou:.2f}",
        )
    return markdown, converter, undefined_macros(html)


def _scored(html: str, converter: str, pdf_words: list[str]) -> tuple[float, str, str, str]:
    """(token IoU of its markdown with the PDF's words, markdown, converter, html) of one conversion."""
    markdown = html_to_markdown(html)
    return token_iou(markdown_words(markdown), pdf_words), markdown, converter, html


def build(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    if path.suffix == ".tar":
        yield from _tar_input(path, doc_id, cfg)
        return
    src = find_source(path)
    md_pages: list[str] | None = None
    converter = None
    if src is None:
        yield Skip("no_latex_source", pages=0, detail=str(path))
    else:
        for reference in outside_references(src):  # refused by the sandbox; counted here
            yield Skip("blocked_file", pages=0, detail=f"{src}: {reference}")
        with open_pdf(path, int(cfg.max_pages_per_doc)) as doc:  # a broken PDF fails here as in pdf_samples
            page_texts = [page.get_text() for page in doc]
        try:
            markdown, converter, undefined = document_markdown(
                src, float(cfg.convert_timeout), page_words("\n".join(page_texts))
            )
        except DocumentError as e:  # no markdown, but the pages keep their layout
            yield Skip(e.reason, pages=0, detail=e.detail)
        else:
            if undefined:
                names = ", ".join(f"{name} x{n}" for name, n in undefined.most_common(8))
                yield Skip("latex_macros_dropped", pages=0, detail=f"{path}: {names}")
            md_pages = split_markdown_by_pages(markdown, page_texts)
    for item in pdf_samples(path, doc_id, cfg, "arxiv"):
        if isinstance(item, Sample) and md_pages is not None:
            md = md_pages[item.page]
            iou = token_iou(markdown_words(md), page_words(page_texts[item.page]))
            item.meta.update(md_converter=converter, md_token_iou=round(iou, 3))
            unshown = macros_not_shown(md, page_texts[item.page])
            if unshown:  # a name the converter garbled (expl3's underscores lost): the label would lie
                item.meta["md_unshown"] = unshown[:3]
                yield Skip("md_macro_not_shown", pages=0, detail=f"{path} page {item.page}: {unshown[:3]}")
            elif iou >= float(cfg.md_min_iou):
                item.md = md
            else:
                yield Skip("md_alignment", pages=0, detail=f"{path} page {item.page}: token IoU {iou:.2f}")
        yield item


def _tar_input(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    """A tar input: an arXiv PDF tar (its papers, paired with the month's source tars beside it), a source tar
    (built with the PDF tars: no pages of its own), or a paper's source archive (built with its PDF)."""
    kind = arxiv_bulk.bulk_kind(path)
    if kind is None:
        if not path.with_suffix(".pdf").exists():
            yield Skip("no_pdf", pages=0, detail=f"{path}: a source archive without its PDF")
        return
    if kind == "src":
        return
    for paper, version, member, source in arxiv_bulk.papers(path):
        origin = f"{path}#{member.name}"
        with tempfile.TemporaryDirectory(prefix="literate-arxiv-bulk-") as tmp:
            name = paper.replace("/", "_")
            pdf = arxiv_bulk.extract(path, member, Path(tmp) / f"{name}.pdf")
            if source is not None:
                arxiv_bulk.extract(*source, Path(tmp) / f"{name}.gz")
            for item in build(pdf, paper, cfg):
                if isinstance(item, Sample):
                    item.origin = origin
                    item.meta.update(arxiv_id=paper, arxiv_version=version)
                yield item
    for paper in arxiv_bulk.unpaired_sources(path):
        yield Skip(
            "no_pdf", pages=0, detail=f"{path}: {paper} has a source but no PDF in the month's PDF tars"
        )
