"""Text-recognition scores of the paper: word-level precision/recall/F1 over a page's words, and the IoU of
predicted boxes matched one-to-one to reference boxes."""

from __future__ import annotations

from collections import Counter


def word_prf(pred_lines: list[dict], ref_lines: list[dict]) -> tuple[float, float, float]:
    """Precision, recall and F1 of the page's words as multisets (case-sensitive, split on white space)."""
    pred = Counter(w for line in pred_lines for w in line["text"].split())
    ref = Counter(w for line in ref_lines for w in line["text"].split())
    if not pred and not ref:
        return 1.0, 1.0, 1.0
    hit = sum((pred & ref).values())
    p = hit / sum(pred.values()) if pred else 0.0
    r = hit / sum(ref.values()) if ref else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def box_iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_lines(pred_lines: list[dict], ref_lines: list[dict]) -> list[tuple[int, int, float]]:
    """One-to-one matches (pred index, ref index, IoU), greedily by IoU, overlapping pairs only."""
    pairs = sorted(
        (
            (box_iou(p["bbox"], r["bbox"]), i, j)
            for i, p in enumerate(pred_lines)
            for j, r in enumerate(ref_lines)
        ),
        reverse=True,
    )
    used_p, used_r, out = set(), set(), []
    for iou, i, j in pairs:
        if iou <= 0:
            break
        if i not in used_p and j not in used_r:
            used_p.add(i)
            used_r.add(j)
            out.append((i, j, iou))
    return out
