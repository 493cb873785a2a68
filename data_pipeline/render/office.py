"""Office documents → PDF with LibreOffice headless: one user profile per worker process (concurrent
instances sharing a profile block each other), and the whole process group killed on time-out."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

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
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise DocumentError("convert_timeout", f"{path}: LibreOffice took over {timeout}s") from e
    out = out_dir / f"{path.stem}.pdf"
    if proc.returncode != 0 or not out.exists():
        raise DocumentError("convert_failed", f"{path}: {err.decode(errors='replace').strip()[-300:]}")
    return out
