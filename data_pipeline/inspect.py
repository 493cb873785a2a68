"""Look at a shard: each sample's image with its layout boxes drawn, and its markdown in a panel beside it.

    python -m data_pipeline.inspect <shard.tar or URL> --out <dir> [--n 8]

Reads the shard exactly as the trainer does (`data_pipeline/storage.py`: paths, http(s), s3, gs, pipe:);
a corrupt shard is reported with its name.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

from data_pipeline.schema import decode_sample
from data_pipeline.storage import UnreadableShard, is_remote, iter_samples
from data_pipeline.synthetic import load_font


def draw_sample(members: dict) -> Image.Image:
    """The page with every layout box outlined (and numbered in reading order); markdown to the right."""
    sample = decode_sample(members, errors="replace")
    page = sample.image().convert("RGB")
    draw = ImageDraw.Draw(page)
    small = load_font(max(10, page.height // 90))
    if sample.lines is not None:
        for i, line in enumerate(sample.lines):
            x0, y0, x1, y1 = line["bbox"]
            colour = (220, 30, 30) if i % 2 == 0 else (30, 90, 220)
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=max(1, page.width // 600))
            draw.text((x0, max(0, y0 - small.size)), str(i), fill=colour, font=small)
    if sample.md is None:
        return page
    md = sample.md
    panel = Image.new("RGB", (max(400, page.width * 3 // 4), page.height), (250, 250, 245))
    font = load_font(max(10, page.height // 70), "DejaVuSansMono.ttf")
    pd = ImageDraw.Draw(panel)
    chars = max(20, int(panel.width / (font.size * 0.6)))
    y = 8
    for raw in md.splitlines():
        for piece in textwrap.wrap(raw, chars) or [""]:
            if y > panel.height - font.size:
                break
            pd.text((8, y), piece, fill=(20, 20, 20), font=font)
            y += int(font.size * 1.25)
    both = Image.new("RGB", (page.width + panel.width, page.height), (255, 255, 255))
    both.paste(page, (0, 0))
    both.paste(panel, (page.width, 0))
    return both


def inspect_shard(shard: str | Path, out: str | Path, n: int = 8) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for sample in iter_samples(shard):
        if len(written) >= n:
            break
        if decode_sample(sample).image_key is None:  # what a cut tar stream leaves of its last sample
            raise UnreadableShard(str(shard), f"sample {sample['__key__']} has no image")
        name = sample["__key__"].replace("/", "__") + ".png"
        draw_sample(sample).save(out / name)
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_pipeline.inspect", description=__doc__.splitlines()[0])
    ap.add_argument("shard")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args(argv)
    if not is_remote(args.shard) and not Path(args.shard).is_file():
        print(f"error: {args.shard}: no such shard", file=sys.stderr)
        return 2
    try:
        files = inspect_shard(args.shard, args.out, args.n)
    except UnreadableShard as e:
        print(f"error: {args.shard}: corrupt shard ({e.reason})", file=sys.stderr)
        return 1
    print(f"wrote {len(files)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
