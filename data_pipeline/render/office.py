"""Office documents → PDF with LibreOffice headless: one user profile per worker process (concurrent
instances sharing a profile block each other), and the whole process group killed on time-out.

LibreOffice follows what a document links to: images and OLE objects linked by path or URL, INCLUDETEXT,
INCLUDEPICTURE, LINK and DDE fields. It runs in the sandbox (`render/sandbox.py`: the document's folder and
no network), where such a link finds nothing; `external_references` finds them in the package first, so
that each is counted (`blocked_external_link`)."""

from __future__ import annotations

import html
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from data_pipeline.render import sandbox
from data_pipeline.schema import DocumentError


def convert_to_pdf(path: Path, out_dir: Path, timeout: float) -> Path:
    """Convert `path` into `out_dir/<stem>.pdf`; raises `DocumentError` (`convert_timeout`, `convert_failed`)."""
    exe = shutil.which("soffice") or shutil.which("libreoffice")
    if exe is None:
        raise DocumentError(
            "convert_unavailable", "LibreOffice is not installed (Debian libreoffice-impress-nogui)"
        )
    profile = Path(tempfile.gettempdir()) / f"literate-lo-{os.getpid()}"
    cmd = [
        exe,
        "--headless",
        "--norestore",
        "--nologo",
        "--nolockcheck",
        "--nodefault",
        f"-env:UserInstallation=file://{profile}",
        "--convert-to",
        "pdf",
        "--outdir",
        str(out_dir),
        str(path),
    ]
    profile.mkdir(exist_ok=True)
    r = sandbox.run(cmd, read=[path.parent], write=[out_dir, profile], timeout=timeout)
    if r is None:
        raise DocumentError("convert_timeout", f"{path}: LibreOffice took over {timeout}s")
    out = out_dir / f"{path.stem}.pdf"
    if r.returncode != 0 or not out.exists():
        raise DocumentError("convert_failed", f"{path}: {r.stderr.decode(errors='replace').strip()[-300:]}")
    return out


# A relationship to a target outside the package (hyperlinks are only addresses, not loaded).
_EXTERNAL_REL = re.compile(r"<Relationship\b[^>]*>", re.IGNORECASE)
# Fields that make a word processor load a file or a URL.
_LOADING_FIELD = re.compile(r"\b(INCLUDETEXT|INCLUDEPICTURE|LINK|DDEAUTO|DDE|IMPORT)\b\s+(\"[^\"]*\"|\S+)")


def external_references(path: Path) -> list[str]:
    """What an OOXML package (docx, pptx, xlsx) would load from outside itself: linked images, objects,
    templates and frames, and loading fields. A package that cannot be read yields none here (the
    converter reports it)."""
    found: list[str] = []
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith(".rels"):
                    for rel in _EXTERNAL_REL.findall(z.read(name).decode("utf-8", "replace")):
                        if 'TargetMode="External"' in rel and not re.search(r'Type="[^"]*/hyperlink"', rel):
                            target = re.search(r'Target="([^"]*)"', rel)
                            found.append(f"{name}: {target.group(1) if target else rel}")
                elif name.endswith(".xml") and name.startswith(("word/", "ppt/", "xl/")):
                    xml = z.read(name).decode("utf-8", "replace")
                    # a field's instruction: an attribute (fldSimple) or text split over runs (instrText)
                    instructions = re.findall(r'w:instr="([^"]*)"', xml) + re.findall(
                        r"w:instr='([^']*)'", xml
                    )
                    instructions.append(" ".join(re.findall(r"<w:instrText[^>]*>([^<]*)<", xml)))
                    for m in _LOADING_FIELD.finditer(html.unescape(" ".join(instructions))):
                        found.append(f"{name}: {m.group(1)} {m.group(2)}")
    except (zipfile.BadZipFile, OSError, KeyError):
        return []
    return found
