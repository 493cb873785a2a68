"""The learning benchmark's reading of its held-out snippets: greedy generation scored by character error rate,
exact match, word F1 and box IoU, beside the control (each snippet read with another one's image) and the
validation losses both ways (`python -m benchmarks.learning`)."""

from __future__ import annotations

from collections import Counter

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
