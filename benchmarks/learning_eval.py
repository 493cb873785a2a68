"""The learning benchmark's reading of its held-out snippets: greedy generation scored by character error rate,
exact match, word F1 and box IoU, beside the control (each snippet read with another one's image) and the
validation losses both ways (`python -m benchmarks.learning`); and where the misses are (`breakdown`: by words,
by characters, with and without capitals), also of a finished run's readings:
`python -m benchmarks.learning_eval runs/learning/<run>/predictions.jsonl [...]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from train.evaluate import Evaluator
from train.scoring import layout_scores, levenshtein


def read_scores(evaluator: Evaluator, max_new_tokens: int, shuffled: bool) -> dict:
    """Greedy reading of the held-out items: character error rate and exact match of the text (its lines joined),
    word F1, and the mean IoU of each true line's box with the box of the line read that it matches best
    (`train.scoring.layout_scores`, as pages are scored); `shuffled`: each item with the next one's image (the
    control)."""
    items = evaluator.items
    if shuffled:
        items = [
            {**it, "flattened_patches": items[(i + 1) % len(items)]["flattened_patches"]}
            for i, it in enumerate(items)
        ]
    preds = evaluator.predict(items, max_new_tokens=max_new_tokens)
    errors = chars = exact = lines = 0
    iou = 0.0
    said_words, true_words, hit_words = 0, 0, 0  # words as multisets per snippet, summed (micro-averaged F1)
    examples = []
    for item, pred in zip(items, preds, strict=True):
        truth = "\n".join(line["text"] for line in item["page"].lines)
        said = "\n".join(line["text"] for line in pred["lines"])
        errors += levenshtein(said, truth)
        chars += len(truth)
        exact += said == truth
        lines += len(pred["lines"])
        said_bag, true_bag = Counter(said.split()), Counter(truth.split())
        said_words, true_words = said_words + said_bag.total(), true_words + true_bag.total()
        hit_words += (said_bag & true_bag).total()
        iou += layout_scores(pred["lines"], item["page"].lines)["iou"]
        examples.append({"truth": truth, "read": said, "generated": pred["text"]})
    n = max(len(items), 1)
    p, r = hit_words / max(said_words, 1), hit_words / max(true_words, 1)
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {
        "cer": errors / max(chars, 1),
        "em": exact / n,
        "lines": lines / n,
        "word_f1": f1,
        "iou": iou / n,
        "examples": examples,
    }


def evaluate(evaluator: Evaluator, max_new_tokens: int) -> tuple[dict, list[dict]]:
    """The curve's figures at this step, and what was read of each held-out snippet."""
    evaluator.model.eval()
    read = read_scores(evaluator, max_new_tokens, shuffled=False)
    control = read_scores(evaluator, max_new_tokens, shuffled=True)
    loss = evaluator.losses()["ocr"]
    loss_shuffled = evaluator.losses(shuffle_images=True)["ocr"]
    evaluator.model.train()
    figures = {
        "cer": read["cer"],
        "em": read["em"],
        "lines": read["lines"],  # lines written per snippet
        "word_f1": read["word_f1"],
        "iou": read["iou"],
        "control_cer": control["cer"],
        "control_em": control["em"],
        "control_word_f1": control["word_f1"],
        "val_loss": loss,
        "val_loss_shuffled": loss_shuffled,
    }
    return figures, read["examples"]


CHAR_BANDS = ((1, 11), (12, 17), (18, 23), (24, 29), (30, None))  # characters of a snippet's text


def breakdown(examples: list[dict]) -> dict[str, dict[str, dict]]:
    """Exact match and character error of the readings (`{"truth", "read"}` each, as `predictions.jsonl` holds
    them) in groups: by the truth's words, by its characters (`CHAR_BANDS`), and by whether it holds a capital
    letter; each group `{"n", "em", "cer"}`, the groups of a kind in order."""

    def band(n: int) -> str:
        lo, hi = next((b for b in CHAR_BANDS if n >= b[0] and (b[1] is None or n <= b[1])), CHAR_BANDS[0])
        return f"{lo}-{hi}" if hi else f"{lo}+"

    keys = {
        "words": lambda t: str(len(t.split())),
        "characters": lambda t: band(len(t)),
        "capitals": lambda t: "with" if any(c.isupper() for c in t) else "without",
    }
    out: dict[str, dict[str, dict]] = {}
    for kind, key in keys.items():
        groups: dict[str, list[dict]] = {}
        for e in examples:
            groups.setdefault(key(e["truth"]), []).append(e)
        order = sorted(groups, reverse=True) if kind == "capitals" else sorted(groups, key=_first_number)
        out[kind] = {
            g: {
                "n": len(groups[g]),
                "em": sum(e["read"] == e["truth"] for e in groups[g]) / len(groups[g]),
                "cer": sum(levenshtein(e["read"], e["truth"]) for e in groups[g])
                / max(sum(len(e["truth"]) for e in groups[g]), 1),
            }
            for g in order
        }
    return out


def _first_number(group: str) -> int:
    """A group's place: "3" -> 3, "12-17" -> 12, "30+" -> 30."""
    return int(group.split("-")[0].rstrip("+"))


def breakdown_table(parts: dict[str, dict[str, dict]]) -> str:
    """`breakdown`'s groups as a markdown table: kind, group, snippets, exact match, CER."""
    rows = ["| by | group | snippets | exact | CER |", "|---|---|---|---|---|"]
    for kind, groups in parts.items():
        rows += [f"| {kind} | {g} | {f['n']} | {f['em']:.1%} | {f['cer']:.3f} |" for g, f in groups.items()]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.learning_eval",
        description="where a run's held-out readings miss: exact match and CER by words, characters, capitals",
    )
    ap.add_argument("predictions", nargs="+", help="predictions.jsonl files (a run's last evaluation)")
    args = ap.parse_args(argv)
    for path in args.predictions:
        try:
            examples = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
        except (OSError, ValueError) as e:
            print(f"{path}: not readable as predictions.jsonl ({e})", file=sys.stderr)
            return 2
        print(f"{path}: {len(examples)} snippets\n{breakdown_table(breakdown(examples))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
