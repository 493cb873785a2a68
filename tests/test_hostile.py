"""Hostile documents (tests/hostile.py) built with the real renderers: a document's time and memory limits
hold whatever it is doing, and its neighbours are built."""

from __future__ import annotations

import io
import time
from pathlib import Path

from data_pipeline.demo_corpus import make_pdf
from tests.hostile import (
    ALLOCATING_PAGE,
    ORDINARY,
    SECRET_WORDS,
    Canary,
    link_outside,
    linking_docx,
    linking_pptx,
    nested_forms_pdf,
    reaching_page,
    reading_latex,
    secret_beside,
)
from tests.test_build_pdf import build, read_shards, summary


def test_a_document_past_its_time_limit_is_stopped_in_native_code(tmp_path):
    """MuPDF drawing 10**7 (and 10**9) nested rectangles cannot be interrupted from Python; the worker
    kills the document's process and goes on with the shard."""
    src = tmp_path / "in"
    make_pdf(src / "a.pdf", seed=1)
    nested_forms_pdf(src / "b_nested7.pdf", levels=7)  # about a minute to draw
    nested_forms_pdf(src / "c_nested9.pdf", levels=9)  # hours
    make_pdf(src / "d.pdf", seed=2)
    out = tmp_path / "out"
    start = time.monotonic()
    r = build("source=pdf", f"input={src}", f"output={out}", "workers=1", "source.doc_timeout=3", check=False)
    elapsed = time.monotonic() - start
    s = summary(r)
    assert s["errors"] == {"doc_timeout": 2} and not s["tasks_failed"], s
    assert elapsed < 40, f"the build took {elapsed:.0f} s: the limit did not stop the drawing"
    docs = {key.split("/")[1] for key in read_shards(out)}
    assert docs == {"a", "d"}


def test_a_document_past_its_memory_limit_is_stopped_and_counted(tmp_path):
    """A page that allocates without end is killed at `worker_memory_mb`, not by the kernel's OOM killer
    with its neighbours; the next document gets a new process and is built."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "a_hungry.html").write_text(ALLOCATING_PAGE)
    (src / "b_ok.html").write_text(f"<!doctype html><p>{ORDINARY}</p>")
    out = tmp_path / "out"
    r = build("source=web", f"input={src}", f"output={out}", "workers=1", "worker_memory_mb=700", check=False)
    s = summary(r)
    assert s["errors"].get("out_of_memory") == 1 and not s["tasks_failed"], s
    assert [key.split("/")[1] for key in read_shards(out)] == ["b_ok"]


def _leaks(out: Path) -> list[str]:
    """Secret words that a tile's image (read by Tesseract) or its label shows."""
    from PIL import Image

    from data_pipeline.render.ocr import tesseract_pages

    samples = read_shards(out)
    images = [Image.open(io.BytesIO(s["png"])) for s in samples.values()]
    texts = [" ".join(ln["text"] for ln in page) for page in tesseract_pages(images)]
    for s in samples.values():
        texts.append(s.get("layout.json", b"").decode() + s.get("md", b"").decode())
    return [w for w in SECRET_WORDS for t in texts if w.lower() in t.lower()]


def _reach(tmp_path: Path, canary: Canary) -> Path:
    src = tmp_path / "in" / "site"
    src.mkdir(parents=True)
    secret = secret_beside(tmp_path / "in")
    link_outside(src, secret)
    (src / "index.html").write_text(reaching_page(secret, canary.port))
    return src


def test_web_offline_reads_only_its_folder_and_reaches_nothing(tmp_path):
    canary = Canary()
    try:
        src = _reach(tmp_path, canary)
        out = tmp_path / "out"
        s = summary(build("source=web", f"input={src}", f"output={out}", "workers=1"))
        h = summary(build("source=html", f"input={src}", f"output={tmp_path / 'hout'}", "workers=1"))
    finally:
        canary.close()
    assert canary.requests == []
    assert h["samples"] == 1 and h["skips"]["blocked_file"] == 5 and h["skips"]["blocked_network"] == 7, h
    assert _leaks(tmp_path / "hout") == []
    assert s["samples"] == 1 and s["errors"] == {}, s  # the page is still built
    # the secret by file: URL (iframe, embed), /etc/passwd, and the two links out of the folder
    assert s["skips"]["blocked_file"] == 5, s
    # stylesheet, iframe, images by address and by name, svg image, css background, fetch (the beacon
    # and the WebSocket are not requests Chromium lets a handler see: they reach the absent proxy)
    assert s["skips"]["blocked_network"] == 7, s
    assert _leaks(out) == []


def test_web_online_refuses_private_addresses_after_every_redirect(tmp_path):
    """A crawled page on an allowed server reaches for a canary on another loopback port, directly, by
    name (`localhost`) and through a redirect of its own server; URL list entries name the canary."""
    import http.server
    import threading
    from functools import partial

    canary = Canary()
    site = tmp_path / "site"
    site.mkdir()
    secret = secret_beside(site)
    (site / "index.html").write_text(
        reaching_page(secret, canary.port).replace(
            "</body>", f'<img src="/go?to=http://127.0.0.1:{canary.port}/redirected"></body>'
        )
    )

    class Site(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/go?to="):
                self.send_response(302)
                self.send_header("Location", self.path.split("=", 1)[1])
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Site, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    urls = tmp_path / "urls.txt"
    urls.write_text(
        f"http://127.0.0.1:{server.server_port}/index.html\nhttp://127.0.0.1:{canary.port}/direct.html\n"
        f"http://localhost:{canary.port}/by-name.html\n"
    )
    out = tmp_path / "out"
    try:
        r = build(
            "source=web",
            f"input={urls}",
            f"output={out}",
            "workers=1",
            "browser.network=online",
            "browser.respect_robots=false",
            f"browser.allow_addresses=[127.0.0.1:{server.server_port}]",
            check=False,
        )
    finally:
        canary.close()
        server.shutdown()
    s = summary(r)
    assert canary.requests == []
    assert s["samples"] == 1, s
    assert s["errors"] == {"blocked_private_address": 2}, s  # the two URL-list entries, refused whole
    # the page's stylesheet, iframe, images by address, by name and through the redirect, svg image,
    # css background, fetch
    assert s["skips"]["blocked_private_address"] == 8, s
    assert s["skips"]["blocked_file"] == 3, s  # file: URLs of an http page: Chromium refuses them
    assert _leaks(out) == []


def test_readme_reads_only_its_folder(tmp_path):
    canary = Canary()
    try:
        proj = tmp_path / "in" / "proj"
        proj.mkdir(parents=True)
        secret = secret_beside(tmp_path / "in")
        link_outside(proj, secret)
        (proj / "README.md").write_text(
            "# A project\n\nThe committee met on Tuesday to review the budget for the coming year, and "
            "most of the discussion was about the new library building.\n\n"
            f"![secret]({secret.as_uri()})\n\n![outside](outside.png)\n\n"
            f'<iframe src="{secret.as_uri()}"></iframe>\n\n<iframe src="outside.txt"></iframe>\n\n'
            f"![canary](http://127.0.0.1:{canary.port}/badge.svg)\n"
        )
        out = tmp_path / "out"
        s = summary(build("source=readme", f"input={proj}", f"output={out}", "workers=1"))
    finally:
        canary.close()
    assert canary.requests == []
    assert s["samples"] == 1 and s["errors"] == {}, s
    assert s["skips"]["blocked_file"] == 4 and s["skips"]["blocked_network"] == 1, s
    assert _leaks(out) == []


def test_latex_reads_only_its_folder(tmp_path):
    """LaTeXML follows `\\input{/abs/path}` and `\\openin`: unsandboxed it puts the secret and the
    machine's accounts into the markdown (the control); in the sandbox it finds neither, and a build counts
    each reference out of the folder."""
    import tempfile

    from data_pipeline.render import sandbox
    from data_pipeline.render.html_markdown import html_to_markdown
    from data_pipeline.sources.arxiv import latexml_html

    inp = tmp_path / "in"
    pdf = reading_latex(inp / "paper", secret_beside(inp))
    converted = {}
    try:
        for mode in ("none", "bwrap"):
            sandbox.use(mode)
            with tempfile.TemporaryDirectory() as work:
                html = latexml_html(pdf.with_suffix("") / "main.tex", Path(work), 120, None, False)
                converted[mode] = html_to_markdown(html)
    finally:
        sandbox.use("bwrap")
    assert (
        SECRET_WORDS[0] in converted["none"] and "root:x:0:0:root:/root" in converted["none"]
    )  # the attack is real
    assert not any(w in converted["bwrap"] for w in SECRET_WORDS) and "/root:" not in converted["bwrap"]
    assert "The committee met on Tuesday" in converted["bwrap"]
    out = tmp_path / "out"
    s = summary(build("source=arxiv", f"input={inp}", f"output={out}", "workers=1"))
    assert s["samples"] == 1 and s["errors"] == {}, s
    assert s["skips"]["blocked_file"] == 4, s  # \input{/abs}, \openin, \IfFileExists{../}, \input{../}
    assert _leaks(out) == []


def test_office_links_are_counted_and_never_followed(tmp_path):
    canary = Canary()
    try:
        src = tmp_path / "in" / "docs"
        linking_docx(src / "minutes.docx", secret_beside(src.parent), canary.port)
        out = tmp_path / "out"
        s = summary(build("source=docx", f"input={src}", f"output={out}", "workers=1"))
        slides = tmp_path / "in" / "slides"
        linking_pptx(slides / "talk.pptx", canary.port)
        p = summary(build("source=powerpoint", f"input={slides}", f"output={tmp_path / 'pout'}", "workers=1"))
    finally:
        canary.close()
    assert canary.requests == []
    assert p["samples"] == 1 and p["skips"]["blocked_external_link"] == 1, p
    assert s["samples"] == 1 and s["errors"] == {}, s
    # INCLUDETEXT of the secret, INCLUDEPICTURE from the canary and from a file, the package's linked image
    assert s["skips"]["blocked_external_link"] == 4, s
    assert _leaks(out) == []


def test_only_public_addresses_are_reachable_unless_allowed():
    import ipaddress

    import pytest

    from data_pipeline.render.netguard import Refused, allowance, is_public, resolve

    private = [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
        "224.0.0.251", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::1", "64:ff9b::a9fe:a9fe",
    ]  # fmt: skip
    assert [a for a in private if is_public(ipaddress.ip_address(a))] == []
    assert all(is_public(ipaddress.ip_address(a)) for a in ("93.184.216.34", "1.1.1.1", "2606:4700::1111"))
    with pytest.raises(Refused) as e:
        resolve("localhost", 80, allowance(()))
    assert e.value.reason == "blocked_private_address"
    allow = allowance(("127.0.0.1:8080", "10.0.0.0/8"))
    assert resolve("127.0.0.1", 8080, allow) == "127.0.0.1" and resolve("10.9.8.7", 1, allow) == "10.9.8.7"
    with pytest.raises(Refused):
        resolve("127.0.0.1", 8081, allow)  # another port of an allowed address
    with pytest.raises(ValueError, match="intranet"):
        allowance(("intranet",))
