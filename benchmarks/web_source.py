"""Web builders: browser reuse throughput, and (`--check`) the fidelity of `web` and `html` on real pages.

    python -m benchmarks.web_source [--input <dir|glob|list>] [--max-docs 50] [--check]

Throughput: the same pages rendered into tiles with one Chromium reused across pages (what a worker does)
vs a fresh Chromium per page, one process, same run; prints pages/s of both and the ratio.
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
from omegaconf import OmegaConf

DEFAULT_PAGES = "/usr/share/doc/python3*/html/library/*.html"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "browser" / "default.yaml"


def throughput(urls: list[str]) -> tuple[float, float]:
    from data_pipeline.render.browser import Browser

    cfg = OmegaConf.load(CONFIG)
    shared = Browser()
    t = time.perf_counter()
    for u in urls:
        shared.render(u, cfg)
    reused = len(urls) / (time.perf_counter() - t)
    shared.close()
    t = time.perf_counter()
    for u in urls:
        b = Browser()
        b.render(u, cfg)
        b.close()
    fresh = len(urls) / (time.perf_counter() - t)
    return reused, fresh


def _plain(md: str) -> str:
    md = re.sub(r"```.*?\n", "", md)
    md = re.sub(r"^\|?[-| :]+\|$", "", md, flags=re.MULTILINE)
    md = re.sub(r"[#*`|>]|^\s*[-+]\s|^\s*\d+\.\s", " ", md, flags=re.MULTILINE)
    return " ".join(md.split())


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
    cfg = OmegaConf.load(CONFIG)
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
    args = ap.parse_args()
    files = sorted(glob.glob(args.input))[: args.max_docs]
    if not files:
        sys.exit(f"no pages match {args.input} (Debian's python3-doc installs the default set)")
    urls = [Path(f).resolve().as_uri() for f in files]
    reused, fresh = throughput(urls[:20])
    print(
        f"{min(20, len(urls))} pages: reused browser {reused:.2f} pages/s, fresh browser per page {fresh:.2f} pages/s, "
        f"ratio {reused / fresh:.1f}x"
    )
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            check(files, Path(tmp))


if __name__ == "__main__":
    main()
