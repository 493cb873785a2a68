"""The geometry of cutting a rendered web page into page-sized tiles: where to cut (between blocks, else between
text lines), the page's words joined into lines, and lines and pictures moved into a tile's pixels. Pure
functions of the boxes the browser measured (`render/browser.py`)."""

from __future__ import annotations

from PIL import Image


def tile_cuts(
    height: int, tile_h: int, min_h: int, blocks: list[list[float]], words: list[list]
) -> list[tuple[int, int]]:
    """Tiles `[(top, bottom)]` covering `[0, height)`, of at most `tile_h` px but the last, which takes a
    remaining sliver under `min_h` px. Each cut is the lowest y in the tile's lower half that crosses no
    block (else no text line; else the hard limit)."""
    # rounded alike, so blocks that touch leave the y between them free
    spans_blocks = sorted((round(a), round(b)) for a, b in blocks)
    spans_lines = sorted((round(w[2]), round(w[4])) for w in words)

    def free(y: int, spans) -> bool:
        return not any(a < y < b for a, b in spans)

    cuts, top = [], 0
    while top < height:
        limit = min(top + tile_h, height)
        bottom = limit
        if limit < height:
            for spans in (spans_blocks, spans_lines):
                inside = [(a, b) for a, b in spans if a < limit and b > top + tile_h // 2]
                y = next((y for y in range(limit, top + tile_h // 2, -1) if free(y, inside)), None)
                if y is not None:
                    bottom = y
                    break
        if bottom - top < min_h and cuts:  # a last sliver joins the tile above (its text is there)
            cuts[-1] = (cuts[-1][0], bottom)
            break
        cuts.append((top, bottom))
        top = bottom
    return cuts


def words_to_lines(words: list[list]) -> list[dict]:
    """Words in DOM order → lines: a word joins the current line when it is in the same block box, sits on
    the same text row and follows closely; it attaches without a space when the DOM has none between."""
    lines: list[dict] = []
    cur = None
    for text, x0, y0, x1, y1, join, box, *_ in words:
        h = y1 - y0
        if cur is not None and cur["box"] == box:
            cy, ch = (cur["y0"] + cur["y1"]) / 2, cur["y1"] - cur["y0"]
            same_row = abs((y0 + y1) / 2 - cy) < 0.5 * min(h, ch)
            gap = x0 - cur["x1"]
            if same_row and -0.25 * h <= gap <= 1.5 * max(h, ch):
                cur["text"] += ("" if join and gap < 0.25 * h else " ") + text
                cur["x0"], cur["y0"] = min(cur["x0"], x0), min(cur["y0"], y0)
                cur["x1"], cur["y1"] = max(cur["x1"], x1), max(cur["y1"], y1)
                continue
        cur = {"text": text, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "box": box}
        lines.append(cur)
    return [{"text": ln["text"], "bbox": [ln["x0"], ln["y0"], ln["x1"], ln["y1"]]} for ln in lines]


def tile_pictures(pictures: list[list[float]], top: int, tile: Image.Image) -> list[list[int]]:
    """The pictures that show in the tile, in tile pixels, clipped to it."""
    out = []
    for x0, y0, x1, y1 in pictures:
        box = [
            max(0, round(x0)),
            max(0, round(y0 - top)),
            min(tile.width, round(x1)),
            min(tile.height, round(y1 - top)),
        ]
        if box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
            out.append(box)
    return out


def tile_lines(lines: list[dict], top: int, tile: Image.Image) -> list[dict]:
    """Lines whose vertical centre falls in the tile, in tile pixels, clipped to it."""
    out = []
    for ln in lines:
        x0, y0, x1, y1 = ln["bbox"]
        if not top <= (y0 + y1) / 2 < top + tile.height:
            continue
        box = [
            max(0.0, x0),
            max(0.0, y0 - top),
            min(float(tile.width), x1),
            min(float(tile.height), y1 - top),
        ]
        if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
            out.append({"text": ln["text"], "bbox": box})
    return out
