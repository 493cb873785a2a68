"""arXiv's bulk data as it ships (`s3://arxiv/pdf/`, `s3://arxiv/src/`, requester pays): monthly tars of PDFs,
`arXiv_pdf_YYMM_NNN.tar` with members `YYMM/<id>v<N>.pdf`, and of sources, `arXiv_src_YYMM_NNN.tar` with members
`YYMM/<id>.gz` (a gzipped tar of the paper's files, or one gzipped .tex) or `YYMM/<id>.pdf` (a submission
without LaTeX). Ids are new-style (`1501.00001`) or old-style (`hep-th9901001`, the archive's name and number).

`source=arxiv` over a local folder of such tars builds each PDF tar as one document: its papers
(the highest version of each) are paired with their sources by id in the source tars of the same month found
beside it, read through tar member offsets without unpacking either tar; each pair is written to a temporary
folder of its own and built as `X.pdf` beside `X.gz` is. A paper without a source keeps its layout samples
(`no_latex_source`, as in the folder layout); sources without a PDF in any of the month's PDF tars are counted
as `no_pdf` once, by the month's first PDF tar. The source tars themselves are inputs of no pages.
"""

from __future__ import annotations

import re
import tarfile
from functools import lru_cache
from pathlib import Path

PDF_TAR = re.compile(r"^arXiv_pdf_(\d{4})_(\d{3})\.tar$")
SRC_TAR = re.compile(r"^arXiv_src_(\d{4})_(\d{3})\.tar$")
MEMBER = re.compile(
    r"(?:^|/)(?P<id>[a-z][a-z.\-]*\d{7}|\d{4}\.\d{4,5})(?:v(?P<version>\d+))?\.(?P<ext>pdf|gz)$"
)


def bulk_kind(path: Path) -> str | None:
    """`pdf` or `src` for arXiv's bulk tars (by their names), else None."""
    if PDF_TAR.match(path.name):
        return "pdf"
    if SRC_TAR.match(path.name):
        return "src"
    return None


def _month_tars(folder: Path, pattern: re.Pattern, month: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if (m := pattern.match(p.name)) and m.group(1) == month)


@lru_cache(maxsize=64)
def _members(tar_path: Path, ext: str) -> dict[str, tuple[int, tarfile.TarInfo]]:
    """`id -> (version, member)` of the tar's `.<ext>` members, the highest version of each id (sources carry
    none: version 0). Reads the tar's headers only."""
    found: dict[str, tuple[int, tarfile.TarInfo]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            m = MEMBER.search(member.name)
            if not member.isfile() or m is None or m.group("ext") != ext:
                continue
            version = int(m.group("version") or 0)
            if m.group("id") not in found or version > found[m.group("id")][0]:
                found[m.group("id")] = (version, member)
    return found


def papers(pdf_tar: Path) -> list[tuple[str, int, tarfile.TarInfo, tuple[Path, tarfile.TarInfo] | None]]:
    """(id, version, PDF member, (source tar, source member) or None) of each paper in a PDF tar, by id."""
    month = PDF_TAR.match(pdf_tar.name).group(1)
    sources: dict[str, tuple[Path, tarfile.TarInfo]] = {}
    for src_tar in _month_tars(pdf_tar.parent, SRC_TAR, month):
        for paper, (_, member) in _members(src_tar, "gz").items():
            sources.setdefault(paper, (src_tar, member))
    return [
        (paper, version, member, sources.get(paper))
        for paper, (version, member) in sorted(_members(pdf_tar, "pdf").items())
    ]


def unpaired_sources(pdf_tar: Path) -> list[str]:
    """The month's sources that no PDF tar of the month holds, when `pdf_tar` is the month's first (so that each
    is counted once); else none."""
    month = PDF_TAR.match(pdf_tar.name).group(1)
    pdf_tars = _month_tars(pdf_tar.parent, PDF_TAR, month)
    if pdf_tars[0] != pdf_tar:
        return []
    with_pdf = {paper for t in pdf_tars for paper in _members(t, "pdf")}
    return sorted(
        paper
        for src_tar in _month_tars(pdf_tar.parent, SRC_TAR, month)
        for paper in _members(src_tar, "gz")
        if paper not in with_pdf
    )


def extract(tar_path: Path, member: tarfile.TarInfo, to: Path) -> Path:
    """One member's bytes written to `to` (the tar is read at the member's offset)."""
    with tarfile.open(tar_path) as tar:
        data = tar.extractfile(member)
        to.write_bytes(data.read() if data is not None else b"")
    return to
