"""`arxiv`: a paper's PDF beside its LaTeX source → layout samples from the PDF, and markdown per page.

Pairs are found by name, as arXiv's bulk data ships them: `X.pdf` with `X/` (a folder), `X.tar.gz`, `X.tgz`,
`X.tar` or `X.gz` (one gzipped .tex). LaTeX → HTML with LaTeXML (as Nougat and the paper do; pandoc when
LaTeXML fails) → markdown → cut into pages by aligning with each page's PDF text. A page whose markdown
matches its PDF text poorly (token IoU below `md_min_iou`) keeps its layout sample but loses its markdown,
counted as `md_alignment`.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pymupdf

from data_pipeline.align import markdown_words, split_markdown_by_pages, token_iou, words
from data_pipeline.render.html_markdown import html_to_markdown
from data_pipeline.schema import DocumentError, Sample, Skip
from data_pipeline.sources.pdf import pdf_samples

EXTENSIONS = (".pdf",)
SOURCE_SUFFIXES = ("", ".tar.gz", ".tgz", ".tar", ".gz")
MAIN_NAMES = ("main.tex", "ms.tex", "paper.tex", "article.tex")


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
    candidates = [p for p in folder.rglob("*.tex") if "\\documentclass" in p.read_text(errors="replace")]
    if not candidates:
        raise DocumentError("no_main_tex", f"{folder}: no .tex file with \\documentclass")
    named = [p for p in candidates if p.name in MAIN_NAMES]
    return (named or sorted(candidates, key=lambda p: -p.stat().st_size))[0]


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess | None:
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def latex_to_html(tex: Path, work: Path, timeout: float) -> tuple[str, str]:
    """(html, converter name); LaTeXML first, pandoc as the fallback."""
    out = work / "latexml.html"
    if shutil.which("latexmlc"):
        r = _run(
            [
                "latexmlc",
                f"--dest={out}",
                "--format=html5",
                "--nocomments",
                "--quiet",
                f"--timeout={int(timeout)}",
                tex.name,
            ],
            tex.parent,
            timeout + 10,
        )
        if r is not None and out.exists() and out.stat().st_size > 0:
            return out.read_text(errors="replace"), "latexml"
    if shutil.which("pandoc"):
        r = _run(["pandoc", "-f", "latex", "-t", "html5", "--mathml", tex.name], tex.parent, timeout)
        if r is not None and r.returncode == 0 and r.stdout:
            return r.stdout.decode(errors="replace"), "pandoc"
    raise DocumentError("latex_conversion_failed", f"{tex}: neither LaTeXML nor pandoc produced HTML")


def build(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    src = find_source(path)
    md_pages: list[str] | None = None
    converter = None
    if src is None:
        yield Skip("no_latex_source", pages=0, detail=str(path))
    else:
        with tempfile.TemporaryDirectory(prefix="literate-arxiv-") as tmp:
            folder = unpack_source(src, Path(tmp) / "src")
            html, converter = latex_to_html(main_tex(folder), Path(tmp), float(cfg.convert_timeout))
        with pymupdf.open(path) as doc:
            page_texts = [page.get_text() for page in doc]
        md_pages = split_markdown_by_pages(html_to_markdown(html), page_texts)
    for item in pdf_samples(path, doc_id, cfg, "arxiv"):
        if isinstance(item, Sample) and md_pages is not None:
            md = md_pages[item.page]
            iou = token_iou(markdown_words(md), words(page_texts[item.page]))
            item.meta.update(md_converter=converter, md_token_iou=round(iou, 3))
            if iou >= float(cfg.md_min_iou):
                item.md = md
            else:
                yield Skip("md_alignment", pages=0, detail=f"{path} page {item.page}: token IoU {iou:.2f}")
        yield item
