"""Padding in micro batches: the share of decoder positions that are padding, on real shards, as the loader
forms micro batches (one step's samples of a rank ordered by target length) against micro batches taken in
stream order.

    python -m benchmarks.padding --shards <build output> [--tokenizer <dir>] [--micro 8] [--prompt 2052]
        [--ranks 1,8,128] [--batch 1024]

Every sample's tokenised target length is measured with the task format; the decoder's positions of a micro
batch are its size x (prompt + its longest target). The prompt is the image's latent tokens and the task
tokens (2,052 for the paper's model). Reported per rank count: padding in stream order and in the loader's
order, and the rank correlation of a micro batch's place in its step with its longest target (1.0: the
steps' micro batches run from short to long; the step's samples themselves are the same either way).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import numpy as np


def target_lengths(shards: str, tokenizer, max_length: int) -> list[int]:

    from data_pipeline.manifest import read_manifest
    from data_pipeline.schema import decode_sample, text_member
    from data_pipeline.storage import iter_samples
    from model.task_format import TaskFormat

    fmt = TaskFormat(tokenizer, 8, max_length)
    manifest = read_manifest(shards)
    out = []
    for i in range(len(manifest)):
        for members in iter_samples(manifest.url(i), wanted=text_member):
            sample = decode_sample(members)
            if sample.layout is not None:
                size = (sample.layout.get("width", 1000), sample.layout.get("height", 1000))
                enc = fmt.encode_layout(sample.lines, size, size)
            elif sample.md is not None:
                enc = fmt.encode_markdown(sample.md)
            else:
                continue
            out.append(len(enc.tensors()["input_ids"]) - 8)  # the target and its task tokens
    return out


def loader_padding(
    shards: str,
    tokenizer,
    world: int,
    window: int,
    slots: int | None,
    micro: int,
    batch: int,
    steps: int,
    ranks: int,
    prompt: int,
) -> tuple[float, float]:
    """The loader itself (`train.loader`, real decoding and tokenising): padding share of its micro batches
    over `steps` steps of the first `ranks` ranks of `world` with `slots` data slots (None: the default), the
    rank correlation of step with mean target length (rank 0), and the rank correlation of a sample's place
    in the stream (step, then its place in the step) with its length over those ranks' samples."""
    from model.processor import ImageProcessor
    from model.task_format import TaskFormat
    from train.loader import BatchStream, make_loader
    from train.samples import SourceSpec

    fmt = TaskFormat(tokenizer, prompt - 4, 4096 + prompt)
    total = real = 0
    step_means, sample_lengths = [], []
    for rank in range(ranks):
        ds = BatchStream([SourceSpec("pdf", shards, 1.0, "ocr")], fmt, ImageProcessor(16), micro, 0, rank, world,
                         0, None, slots, batch, window=window)  # fmt: skip
        batches = make_loader(ds)
        for _ in range(steps):
            lengths = []
            for _ in range(ds.plan.accumulation):
                b = next(batches)
                n = (b["input_ids"] != tokenizer.pad_id).sum(dim=1)
                total += b["input_ids"].numel()
                real += int(n.sum())
                lengths += n.tolist()
            if rank == 0:
                step_means.append(sum(lengths) / len(lengths))
            sample_lengths.append(lengths)
    rng = random.Random(0)  # a step's samples in a random order (their order within a step means nothing)
    flat = [n for step in sample_lengths for n in rng.sample(step, len(step))]
    return (
        1 - real / total,
        spearman(list(range(len(step_means))), step_means),
        spearman(list(range(len(flat))), flat),
    )


def padding(batches: list[list[int]], prompt: int) -> float:
    total = sum(len(b) * (prompt + max(b)) for b in batches)
    real = sum(prompt + n for b in batches for n in b)
    return 1 - real / total


def spearman(x, y) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1]) if len(x) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True)
    ap.add_argument("--tokenizer")
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=2052)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--ranks", default="1,8,128")
    ap.add_argument("--max-length", type=int, default=4096 + 2052)
    ap.add_argument(
        "--loader",
        default="128:1,128:256,128:256:1024,8:1,8:256",
        help="world:window[:slots] run through the loader (slots left out: the default)",
    )
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--measured-ranks", type=int, default=4)
    args = ap.parse_args()
    from model.tokenizer import Tokenizer, iter_texts, train_tokenizer
    from train.batch_plan import batch_plan, cut

    with tempfile.TemporaryDirectory() as tmp:
        tok = (
            Tokenizer(args.tokenizer)
            if args.tokenizer
            else train_tokenizer(
                iter_texts([args.shards]), Path(tmp) / "tok", vocab_size=8000, coord_bins=1024
            )
        )
        lengths = target_lengths(args.shards, tok, args.max_length)
        for spec in filter(None, args.loader.split(",")):
            world, window, *rest = map(int, spec.split(":"))
            slots = rest[0] if rest else None
            share, corr, drift = loader_padding(args.shards, tok, world, window, slots, args.micro, args.batch,
                                                args.steps, args.measured_ranks, args.prompt)  # fmt: skip
            plan = batch_plan(args.batch, args.micro, world, slots)
            print(
                f"loader, {world} ranks, {plan.slots} slots, length_window={window}: padding {share:.1%} of "
                f"decoder positions over {args.steps} steps of {args.measured_ranks} ranks; rank correlation of "
                f"step and mean length (rank 0) {corr:.2f}, of a sample's place in the stream and its length "
                f"{drift:.2f}",
                flush=True,
            )
    p10, p50, p90 = np.percentile(lengths, [10, 50, 90])
    print(
        f"{len(lengths)} samples; target tokens p10/p50/p90 = {p10:.0f}/{p50:.0f}/{p90:.0f}; prompt {args.prompt}"
    )
    rng = random.Random(0)
    stream = [rng.choice(lengths) for _ in range(args.batch * 20)]  # 20 global batches in mixture order
    for world in map(int, args.ranks.split(",")):
        plan = batch_plan(args.batch, args.micro, world)
        k = plan.per_slot
        before, after, places, longest = [], [], [], []
        for step in range(20):
            batch = stream[step * args.batch : (step + 1) * args.batch]
            for rank in range(world):
                mine = [n for s in plan.rank_slots(rank) for n in batch[s * k : (s + 1) * k]]
                for order, out in ((mine, before), (sorted(mine), after)):
                    runs = cut(order, plan.accumulation)
                    out.extend(c for c in runs if c)
                    if out is after:
                        places += [i for i, c in enumerate(runs) if c]
                        longest += [max(c) for c in runs if c]
        # Each slot sorting a look-ahead window of samples drawn independently, and every slot giving, at each
        # step, the samples at the same place of its sorted window (places visited in a seeded random order):
        # the bound the loader's windows approach when a slot's consecutive samples are unrelated.
        windowed = {}
        for window in (64, 256):
            sorted_slots = [sorted(rng.choice(lengths) for _ in range(window)) for _ in range(plan.slots)]
            order = list(range(window // k))
            random.Random(1).shuffle(order)
            got = []
            for place in order[:20]:
                batch = [n for s in range(plan.slots) for n in sorted_slots[s][place * k : (place + 1) * k]]
                for rank in range(world):
                    mine = sorted(n for s in plan.rank_slots(rank) for n in batch[s * k : (s + 1) * k])
                    got += cut(mine, plan.accumulation)
            windowed[window] = padding([c for c in got if c], args.prompt)
        print(
            f"{world:>4} ranks ({plan.describe()}, {plan.slots} slots): padding {padding(before, args.prompt):.1%} "
            f"in stream order, {padding(after, args.prompt):.1%} ordered by length within a step, "
            f"{', '.join(f'{v:.1%} with independent windows of {w}' for w, v in windowed.items())}; rank "
            f"correlation of a micro batch's place in its step and its length {spearman(places, longest):.2f}"
        )


if __name__ == "__main__":
    main()
