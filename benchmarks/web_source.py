"""Web builders: browser reuse throughput, and (`--check`) the fidelity of `web` and `html` on real pages.

    python -m benchmarks.web_source [--input <dir|glob|list>] [--max-docs 50] [--check]

Throughput: the same pages rendered into tiles with one Chromium reused across pages (what a worker does)
vs a fresh Chromium per page, one process, same run; prints pages/s of both and the ratio, then the same
for a bare Playwright loop that only loads and captures each page (the ceiling of that ratio here); then
both again on generated one-screen pages, where the launch saved weighs most.
Check: builds `web` and `html` shards of the pages, then measures every box inside its image, the share of
line texts found verbatim in the page's `innerText` (white space normalised), how many of the pages'
headings, lists, code blocks and tables reach the markdown, and the mean normalised edit similarity between
each tile's markdown (as plain text) and its visible text.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lxml.html

from configs.compose import compose

DEFAULT_PAGES = "/usr/share/doc/python3*/html/library/*.html"


def browser_config():
    """The build's `browser` group as the build composes it."""
    return compose("build", ["source=web", "input=unused", "output=unused"]).browser


def throughput(urls: list[str]) -> tuple[float, float]:
    """(pages/s with one reused browser, pages/s with a fresh browser per page) of `Browser.render`."""
    from data_pipeline.render.browser import Browser

    cfg = browser_config()
    return _reused_vs_fresh(urls, Browser, lambda b, u: b.render(u, cfg), lambda b: b.close())


def bare_throughput(urls: list[str]) -> tuple[float, float]:
    """The same for the least a builder that captures whole pages does, with bare Playwright: a context and
    page, `goto`, the page height, one capture of the page, close. Its ratio bounds what any such builder
    can gain from reusing the browser on these pages."""
    from playwright.sync_api import sync_playwright

    from data_pipeline.render.browser import CHROMIUM_ARGS, chromium_path

    def launch():
        pw = sync_playwright().start()
        return pw, pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)

    def page(pair, url):
        context = pair[1].new_context(viewport={"width": 1024, "height": 1448})
        p = context.new_page()
        p.goto(url, wait_until="load")
        h = min(14480, p.evaluate("document.documentElement.scrollHeight"))
        clip = {"x": 0, "y": 0, "width": 1024, "height": max(h, 1), "scale": 1}
        context.new_cdp_session(p).send(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True, "optimizeForSpeed": True},
        )
        context.close()

    def close(pair):
        pair[1].close()
        pair[0].stop()

    return _reused_vs_fresh(urls, launch, page, close)


def _reused_vs_fresh(urls, launch, page, close) -> tuple[float, float]:
    shared = launch()
    t = time.perf_counter()
    for u in urls:
        page(shared, u)
    reused = len(urls) / (time.perf_counter() - t)
    close(shared)
    t = time.perf_counter()
    for u in urls:
        b = launch()
        page(b, u)
        close(b)
    return reused, len(urls) / (time.perf_counter() - t)


def compare(label: str, urls: list[str]) -> None:
    """Print reused vs fresh pages/s for ours and for the bare Playwright loop on `urls`."""
    reused, fresh = throughput(urls)
    bare_reused, bare_fresh = bare_throughput(urls)
    print(
        f"{label}: reused browser {reused:.2f} pages/s, fresh browser per page {fresh:.2f} pages/s, "
        f"ratio {reused / fresh:.2f}x; bare Playwright (load + one capture, nothing else): reused "
        f"{bare_reused:.2f}, fresh {bare_fresh:.2f} pages/s, ratio {bare_reused / bare_fresh:.2f}x; ours reused "
        f"runs at {reused / bare_reused:.2f}x the bare loop's pages/s"
    )


def check(files: list[str], tmp: Path) -> None:
    import webdataset as wds
    from PIL import Image

    from data_pipeline.render.browser import Browser

    (tmp / "list.txt").write_text("\n".join(files))
    for source in ("web", "html"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "data_pipeline.build",
                f"source={source}",
                f"input={tmp / 'list.txt'}",
                f"output={tmp / source}",
                "workers=2",
                "filters.languages=all",
                "dedup=false",
            ],
            check=True,
            capture_output=True,
        )
    cfg = browser_config()
    inner = {}
    for f in files:
        inner[Path(f).resolve().as_uri()] = " ".join(
            Browser.shared().render(Path(f).resolve().as_uri(), cfg, with_text=True).inner_text.split()
        )

    def samples(source):
        for shard in json.loads((tmp / source / "manifest.json").read_text())["shardlist"]:
            yield from wds.WebDataset(str(tmp / source / shard["url"]), shardshuffle=False, empty_check=False)

    lines = verbatim = tiles = inside = 0
    for s in samples("web"):
        layout, meta = json.loads(s["layout.json"]), json.loads(s["meta.json"])
        w, h = Image.open(io.BytesIO(s["png"])).size
        tiles += 1
        inside += all(
            0 <= ln["bbox"][0] < ln["bbox"][2] <= w and 0 <= ln["bbox"][1] < ln["bbox"][3] <= h
            for ln in layout["lines"]
        )
        for ln in layout["lines"]:
            lines += 1
            verbatim += ln["text"] in inner[meta["origin"]]
    print(
        f"web: {tiles} tiles from {len(files)} pages; every box inside on {inside}/{tiles}; "
        f"{verbatim}/{lines} line texts ({verbatim / max(lines, 1):.1%}) verbatim in innerText"
    )

    md_by_page: dict[str, str] = {}
    sims = []
    for s in samples("html"):
        meta, md = json.loads(s["meta.json"]), s["md"].decode()
        md_by_page[meta["origin"]] = md_by_page.get(meta["origin"], "") + "\n" + md
        sims.append(meta.get("md_token_iou", 0))
    kept = {"headings": [0, 0], "lists": [0, 0], "code blocks": [0, 0], "tables": [0, 0]}
    for f in files:
        uri = Path(f).resolve().as_uri()
        md = md_by_page.get(uri, "")
        doc = lxml.html.parse(f).getroot()
        body = doc.find(".//div[@role='main']")
        body = body if body is not None else doc.find(".//body")
        for name, xpath, pattern in (
            ("headings", ".//h1|.//h2|.//h3", r"^#{1,3} "),
            ("lists", ".//ul|.//ol", r"^\s*(-|\d+\.) "),
            ("code blocks", ".//pre", r"^```"),
            ("tables", ".//table", r"^\|---"),
        ):
            want = len(body.xpath(xpath)) if body is not None else 0
            got = len(re.findall(pattern, md, flags=re.MULTILINE))
            kept[name][0] += min(got, want) if name != "code blocks" else min(got // 2, want)
            kept[name][1] += want
    print("html: " + ", ".join(f"{k} {a}/{b}" for k, (a, b) in kept.items()))
    edit = []
    for s in samples("html"):
        meta = json.loads(s["meta.json"])
        edit.append(meta["md_edit_similarity"])
    print(
        f"html: {len(edit)} tiles kept; mean normalised edit similarity markdown vs visible text "
        f"{sum(edit) / max(len(edit), 1):.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=DEFAULT_PAGES)
    ap.add_argument("--max-docs", type=int, default=50)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--check-only", action="store_true", help="the fidelity check without the throughput")
    args = ap.parse_args()
    files = sorted(glob.glob(args.input))[: args.max_docs]
    if not files:
        sys.exit(f"no pages match {args.input} (Debian's python3-doc installs the default set)")
    urls = [Path(f).resolve().as_uri() for f in files]
    if not args.check_only:
        n = min(20, len(urls))
        compare(f"{n} pages", urls[:n])
        # The gain from reusing the browser is the launch saved over the page's own work, so it depends on
        # the pages: the same on one-screen pages, made here.
        with tempfile.TemporaryDirectory() as tmp:
            short = []
            for i in range(n):
                page = Path(tmp) / f"short{i}.html"
                page.write_text(
                    f"<html><body><h1>Page {i}</h1><p>One paragraph of text on page {i}.</p></body></html>"
                )
                short.append(page.as_uri())
            compare(f"{n} one-screen pages", short)
    if args.check or args.check_only:
        with tempfile.TemporaryDirectory() as tmp:
            check(files, Path(tmp))


if __name__ == "__main__":
    main()
