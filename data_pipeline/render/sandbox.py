"""Converters (LaTeXML, pandoc, LibreOffice) run in a sandbox: Debian's bubblewrap (`bwrap`, as Flatpak
uses it) gives each run new namespaces with no network, no other process, and a file system holding only
the system's programs and data (`/usr`, the TeX and font configuration under `/etc` and `/var`), the
document's own folder (read-only) and the run's work folder (writable). `\\input{/etc/passwd}`, a linked
image in a DOCX or an INCLUDETEXT field then find nothing: there is no such file, and no network to fetch
one from. The sandbox dies with the process that started it.

`sandbox: bwrap` (default) or `none` (a machine where bwrap cannot create namespaces; the documents are
then trusted) is set per build (`configs/build.yaml`); `check()` tells before any work starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

# What the converters need of the system, read-only. /etc is not bound whole: only the configuration
# they read (Debian's alternatives are symbolic links the programs are found through).
SYSTEM_PATHS = (
    "/usr",
    "/etc/alternatives",
    "/etc/fonts",
    "/etc/texmf",
    "/etc/libreoffice",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/papersize",
    "/etc/perl",
    "/etc/mime.types",
    "/etc/ImageMagick-6",
    "/var/lib/texmf",
    "/var/cache/fontconfig",
)
# The only account the sandbox knows (programs that look up their user find this one).
PASSWD = "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"

_mode = {"name": "bwrap"}


def use(mode: str) -> None:
    """Set this process's sandbox: `bwrap` or `none`."""
    if mode not in ("bwrap", "none"):
        raise ValueError(f"sandbox={mode!r}: choose bwrap or none")
    _mode["name"] = mode


def check(mode: str) -> str | None:
    """Why `mode` cannot run here, or None."""
    if mode == "none":
        return None
    if mode != "bwrap":
        return f"sandbox={mode!r}: choose bwrap or none"
    if shutil.which("bwrap") is None:
        return "sandbox=bwrap needs `bwrap` on PATH (Debian package bubblewrap), or set sandbox=none"
    r = subprocess.run([*_bwrap([], [], None), "true"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return f"sandbox=bwrap cannot create its namespaces here ({r.stderr.strip()[:200]}); set sandbox=none"
    return None


def wrap(cmd: list[str], read: list[Path] = (), write: list[Path] = (), cwd: Path | None = None) -> list[str]:
    """`cmd` to run in the sandbox, seeing `read` (read-only) and `write` (writable) besides the system."""
    if _mode["name"] == "none":
        return cmd
    return [*_bwrap(read, write, cwd), *cmd]


def _bwrap(read, write, cwd) -> list[str]:
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for path in SYSTEM_PATHS:
        args += ["--ro-bind-try", path, path]
    for name in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{name}"):
            args += ["--symlink", os.readlink(f"/{name}"), f"/{name}"]
        else:
            args += ["--ro-bind-try", f"/{name}", f"/{name}"]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--ro-bind", _passwd(), "/etc/passwd"]
    for path in dict.fromkeys(Path(p).resolve() for p in read):
        args += ["--ro-bind", str(path), str(path)]
    for path in dict.fromkeys(Path(p).resolve() for p in write):
        args += ["--bind", str(path), str(path)]
    home = str(Path(write[0]).resolve()) if write else "/tmp"
    args += ["--setenv", "HOME", home, "--setenv", "TMPDIR", home]
    if cwd is not None:
        args += ["--chdir", str(Path(cwd).resolve())]
    return args


def run(cmd: list[str], read=(), write=(), cwd: Path | None = None, timeout: float | None = None):
    """Run `cmd` in the sandbox with its output captured: a `subprocess.CompletedProcess` (bytes), or
    None when it ran past `timeout` seconds (it and everything it started are then killed)."""
    proc = subprocess.Popen(
        wrap(cmd, read, write, cwd),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _passwd() -> str:
    path = Path(tempfile.gettempdir()) / "literate-sandbox-passwd"
    if not path.exists():
        path.write_text(PASSWD)
    return str(path)
