"""pandoc (Debian `pandoc`) as a converter to HTML, with a time limit and counted failures."""

from __future__ import annotations

import subprocess
from pathlib import Path

from data_pipeline.render import sandbox
from data_pipeline.schema import DocumentError


def pandoc_html(path: Path, from_format: str, timeout: float) -> str:
    """`path` (in pandoc's `from_format`: gfm, docx, latex, ...) as an HTML5 fragment."""
    try:
        cmd = sandbox.wrap(["pandoc", "-f", from_format, "-t", "html5", str(path)], read=[path.parent])
        r = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise DocumentError("convert_timeout", f"{path}: pandoc took over {timeout}s") from e
    if r.returncode != 0:
        raise DocumentError("convert_failed", f"{path}: {r.stderr.decode(errors='replace').strip()[-300:]}")
    return r.stdout.decode("utf-8", errors="replace")
