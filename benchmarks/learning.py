"""Does a model trained from scratch learn to read? Train on snippet samples, read held-out ones every N steps.

    python -m benchmarks.learning --minutes 10 [key=value ...]      (keys and defaults: configs/tools/learning.yaml)

A bare training loop over the pieces `train.pretrain` uses (it evaluates losses, not greedy reading, every N
steps): the model built from a preset (`model.kosmos.build_model`), samples of the synthetic source's snippet mode
(`draw_sample`) encoded as the loader encodes shard members (`data_pipeline.schema.DrawnSample`: their labels
and pixels without the PNG round trip), the loader's `Encoder` and `collate`, the `<ocr>` task format, the
project's sentencepiece tokenizer (by default a character vocabulary made for the run), and `train.engine`'s
parameter groups and schedule under AdamW.

Every `eval.every` steps the held-out snippets (their own seed, and words and fonts of their own where the
config says so) are read by greedy generation as `train.evaluate` reads pages: character error rate (edit
distance over the truth's length) and exact match of the text, then the same with each image swapped for another
snippet's (the control: what the model writes without reading). The validation loss is taken both ways too.
Writes `curve.jsonl`, `curve.png`, `table.md` (the curve, then the last reading's misses by words, characters and
capitals: `learning_eval.breakdown`), the last evaluation's `predictions.jsonl` and the weights (`model.pt`) into
`out`, prints the table and a row for
`benchmarks/results/learning.md`.

Without `steps`, the schedule's length is fitted to `--minutes` from the first steps' and the first evaluation's
times; curves are only comparable on equal schedules, so pass `steps=` to compare runs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import string
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from benchmarks import learning_ddp
from benchmarks.learning_ddp import Ranks
from benchmarks.learning_eval import breakdown, breakdown_table, evaluate
from benchmarks.learning_plots import compare, plot, table
from configs.compose import compose as compose_config
from configs.compose import compose_app, recipe_stages
from data_pipeline.schema import DrawnSample, Sample
from data_pipeline.snippet_text import TextSpec, make_text, make_texts
from data_pipeline.sources import synthetic
from data_pipeline.storage import is_remote
from model.config import config_from_dict
from model.kosmos import build_model, grow_latents
from model.processor import ImageProcessor
from model.task_format import TaskFormat
from model.tokenizer import Tokenizer, special_symbols, train_tokenizer
from train.engine import lr_lambda, param_groups
from train.evaluate import Evaluator
from train.pages import EvalPage, iter_pages, line_crops
from train.samples import Encoder, SourceSpec, collate

SPEC = SourceSpec("snippets", "generated", 1.0, "ocr")
FIT_STEPS = 20  # steps timed before the schedule's length is fitted to the budget
PRINTABLE = [c for c in string.printable if c.isprintable()]  # `tokenizer=char`: one piece each


def compose(overrides: list[str]):
    cfg = compose_app("learning", overrides)
    if cfg.snippets.get("mode") != "snippet":
        raise ValueError(
            f"snippets.mode={cfg.snippets.get('mode')}: the benchmark reads snippets (mode=snippet)"
        )
    # The texts' and the drawing's knobs, training's and the held-out set's: a bad one is refused here, by name.
    text_spec(cfg)
    text_spec(cfg, cfg.held_out.text)
    source_config(cfg)
    source_config(cfg, cfg.held_out.snippets)
    if int(cfg.procs) < 1 or int(cfg.batch) % int(cfg.procs):
        raise ValueError(
            f"procs={cfg.procs}: the processes share each step's batch={cfg.batch}: give a divisor"
        )
    crops = cfg.held_out.crops
    if crops and not is_remote(str(crops)) and not glob.glob(str(crops)):
        raise ValueError(f"held_out.crops={crops}: no such folder, shard or file")
    return cfg


def text_spec(cfg, extra=None) -> TextSpec:
    """The training texts' spec, or with `extra` (a held-out set's keys; null keeps training's) over it. A held-out
    set draws its lengths uniformly unless it gives its own `length_weights`."""
    chosen = (
        {k: v for k, v in OmegaConf.to_container(extra, resolve=True).items() if v is not None}
        if extra
        else {}
    )
    merged = OmegaConf.merge(cfg.text, chosen)
    if extra:
        merged.length_weights = chosen.get("length_weights")
    return TextSpec.from_config(OmegaConf.to_container(merged, resolve=True))


def source_config(cfg, extra=None):
    """The synthetic source's config with the run's snippet knobs (and a held-out set's) over it; checked."""
    source = compose_config("build", ["source=synthetic", "input=unused", "output=unused"]).source
    merged = OmegaConf.merge(source, cfg.snippets, extra or {})
    synthetic.check_config(merged)
    return merged


def make_tokenizer(cfg, out: Path) -> Tokenizer:
    """`tokenizer=char`: one piece per printable ASCII character (the same vocabulary for every text kind, so that
    one run's weights start another's), with the task's symbols; or the tokenizer folder named."""
    if cfg.tokenizer != "char":
        return Tokenizer(cfg.tokenizer)
    texts = [" ".join(PRINTABLE)] * 10 + ["".join(PRINTABLE)] * 10
    reserved = len(special_symbols(cfg.coord_bins)) + 4 + 256
    return train_tokenizer(
        texts, out / "tokenizer", reserved + len(PRINTABLE) + 1, cfg.coord_bins, "char", num_threads=1
    )


def grouped(texts: list[str], cfg) -> list[list[str]]:
    """The texts a sample at a time: `lines_per_snippet` lines each (a small page of lines above one another)."""
    n = int(cfg.get("lines_per_snippet", 1))
    return [texts[i : i + n] for i in range(0, len(texts), n)]


class Batches(torch.utils.data.IterableDataset):
    """The training batches, endless: `batch` snippets of `lines_per_snippet` texts each, drawn and encoded as
    the loader encodes a build's samples (the same tensors, without writing the PNG and reading it back), then
    collated; the texts from `random.Random(seed)`, so the stream is the same in the training process and in a
    worker process (`data_workers=1` draws the next batches while the model trains on this one: for a machine
    with a core to spare). Process `rank` of `world` (`procs`) draws every `world`-th sample of each step's
    `batch`, from the `rank`-th: together the processes draw the samples one process would."""

    def __init__(
        self,
        spec: TextSpec,
        source,
        fonts,
        encoder: Encoder,
        pad_id: int,
        seed: int,
        batch: int,
        rank=0,
        world=1,
    ):
        super().__init__()
        source = OmegaConf.to_container(source, resolve=True) if OmegaConf.is_config(source) else source
        self.spec, self.source, self.fonts, self.encoder = spec, source, fonts, encoder
        self.pad_id, self.seed, self.batch, self.rank, self.world = pad_id, seed, batch, rank, world

    def __iter__(self):
        rng = random.Random(self.seed)
        per = int(self.source.get("lines_per_snippet", 1))
        step = 0
        while True:
            texts = grouped([make_text(self.spec, rng) for _ in range(self.batch * per)], self.source)
            doc = f"train-{self.seed}-{step}"
            items = []
            for page in range(self.rank, len(texts), self.world):
                sample = synthetic.draw_sample(texts[page], doc, page, doc, self.source, self.fonts)
                item = self.encoder.encode(SPEC, DrawnSample(sample)) if isinstance(sample, Sample) else None
                if isinstance(item, dict):
                    items.append(item)
            yield collate(items, self.pad_id)
            step += 1


def held_out_pages(cfg) -> list[EvalPage]:
    """The held-out snippets: drawn as configured (`held_out.text`, `held_out.snippets`), or crops of the lines of
    real pages (`held_out.crops`: a build's shards, a folder of labelled images, ...: `train.pages.iter_pages`)."""
    h = cfg.held_out
    if h.crops:
        charset = set(PRINTABLE) if cfg.tokenizer == "char" else None
        pages = iter_pages(str(h.crops))  # one at a time: only the crops are kept
        crops = line_crops(pages, tuple(h.crop_words), float(h.crop_margin), int(h.count), charset)
        if not crops:
            raise ValueError(f"held_out.crops={h.crops}: no labelled line of {list(h.crop_words)} words")
        return crops
    spec = text_spec(cfg, cfg.held_out.text)
    source = source_config(cfg, cfg.held_out.snippets)
    fonts = synthetic.fonts_of(source)
    per = int(source.get("lines_per_snippet", 1))
    texts = make_texts(spec, int(cfg.held_out.count) * per, int(cfg.held_out.seed))
    pages = []
    for page, lines in enumerate(grouped(texts, source)):
        sample = synthetic.draw_sample(
            lines, f"held-out-{cfg.held_out.seed}", page, "held-out", source, fonts
        )
        if isinstance(sample, Sample):
            pages.append(EvalPage(sample.key, "snippets", sample.image, sample.lines))
    return pages


def run(cfg, minutes: float | None = None, threads: int | None = None, quiet: bool = False) -> dict:
    """Train and evaluate as configured; returns the run's summary (and writes the curve files). With `procs=N`
    the training runs in N processes (`benchmarks.learning_ddp`), `threads` (default: the cores) shared out."""
    procs = int(cfg.procs)
    if procs == 1:
        return train(cfg, minutes, threads, quiet)
    share = max(1, (threads or os.cpu_count() or 1) // procs)
    learning_ddp.spawn(train, procs, cfg, minutes, share, quiet)
    return json.loads((Path(cfg.out) / "summary.json").read_text())


def train(cfg, minutes, threads, quiet, rank: int = 0, world: int = 1) -> dict:
    """`run` in this process, as process `rank` of `world` (the lead, rank 0, evaluates and writes)."""
    ranks = Ranks(rank, world)
    if threads:
        torch.set_num_threads(threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if quiet or not ranks.lead else (lambda *a: print(*a, flush=True))
    torch.manual_seed(int(cfg.seed))
    train_spec = text_spec(cfg)
    source = source_config(cfg)
    fonts = synthetic.fonts_of(source)
    tok = make_tokenizer(cfg, out) if ranks.lead else None
    ranks.wait()  # the lead has written the run's tokenizer; the others read it
    tok = tok or (Tokenizer(out / "tokenizer") if cfg.tokenizer == "char" else make_tokenizer(cfg, out))
    model_node = OmegaConf.to_container(cfg.model, resolve=True)
    model_node["text"]["vocab_size"] = tok.vocab_size
    model = build_model(config_from_dict(model_node))
    if cfg.init:  # a previous run's weights (the same model and tokenizer): a curriculum's next stage
        state = torch.load(cfg.init, map_location="cpu", weights_only=True)
        # More latent queries than the weights have: each is repeated (`grow_latents`).
        state = grow_latents(state, model.config.latent_query_num, str(cfg.init))
        model.load_full_state_dict(state, str(cfg.init))
    model.train()
    fmt = TaskFormat(tok, model.config.latent_query_num, int(cfg.max_length))
    encoder = Encoder(fmt, ImageProcessor(model.config.max_patches))
    evaluator = Evaluator(
        model, tok, int(cfg.max_length), batch=int(cfg.eval.batch), num_beams=int(cfg.eval.num_beams)
    )
    evaluator.prepare(held_out_pages(cfg) if ranks.lead else [], ("ocr",))  # the lead alone evaluates
    # Each line's text, its box's 6 tokens and the newline; then </s> and one spare.
    longest = max(
        (sum(len(tok.encode(ln["text"])) + 7 for ln in it["page"].lines) for it in evaluator.items), default=0
    )
    max_new = int(cfg.eval.max_new_tokens or longest + 2)
    opt = torch.optim.AdamW(
        param_groups(model, cfg.optim.weight_decay, cfg.optim.lr, cfg.optim.image_lr_scale),
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
    )
    warmup = int(cfg.optim.warmup_steps)
    total = int(cfg.steps) if cfg.steps is not None else None  # 0: evaluate `init` only
    # Until the schedule's length is fitted, only the warm-up's part of it runs (it does not depend on the length).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(warmup, total or 10**9)(s))
    budget = minutes * 60 if minutes else None
    every = int(cfg.eval.every)
    say(
        f"model {model.num_parameters() / 1e6:.2f}M parameters, vocabulary {tok.vocab_size}, "
        f"{len(evaluator.items)} held-out snippets, text {train_spec.kind} {list(train_spec.length)}"
    )
    curve_file = (out / "curve.jsonl").open("w") if ranks.lead else None
    curve: list[dict] = []
    # The training stream: the same batches with or without a worker process drawing them ahead.
    stream = Batches(
        train_spec, source, fonts, encoder, tok.pad_id, int(cfg.seed), int(cfg.batch), rank, world
    )
    trained = ranks.wrap(model)
    workers = int(cfg.data_workers)
    batches = iter(
        torch.utils.data.DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=4 if workers else None,
            worker_init_fn=lambda _: torch.set_num_threads(1),
        )
    )
    started = time.perf_counter()
    train_time = eval_time = 0.0
    flops = 0.0  # training FLOPs so far, of the padded batches as they ran (model.estimate_flops)
    losses: list[float] = []
    last_read: list[dict] = []

    def record(step: int) -> None:
        nonlocal eval_time
        if not ranks.lead:
            return ranks.wait()
        t = time.perf_counter()
        row = {
            "step": step,
            "minutes": round((t - started) / 60, 2),
            "flops": float(f"{flops:.4g}"),
            "loss": None,
        }
        if losses:
            row["loss"] = round(sum(losses) / len(losses), 4)
            losses.clear()
        figures, examples = evaluate(evaluator, max_new)
        last_read[:] = examples  # the breakdown at the end is of the last reading
        row.update({k: round(v, 4) for k, v in figures.items()})
        (out / "predictions.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
        eval_time += time.perf_counter() - t
        curve.append(row)
        curve_file.write(json.dumps(row) + "\n")
        curve_file.flush()
        say(json.dumps(row))
        ranks.wait()

    record(0)
    step = 0
    while total is None or step < total:
        if budget and ranks.agree(time.perf_counter() - started > budget):
            break
        t = time.perf_counter()
        batch = next(batches)
        patches = batch["flattened_patches"]
        if cfg.train_shuffled:
            patches = patches.roll(1, dims=0)
        result = trained(
            batch["input_ids"],
            flattened_patches=patches,
            image_embeds_position_mask=batch["image_embeds_position_mask"],
            labels=batch["labels"],
            compute_logits=False,
        )
        opt.zero_grad(set_to_none=True)
        ranks.loss(result).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        losses.append(result.loss.item())  # the lead's share of the step's samples
        flops += (
            world * patches.shape[0] * model.estimate_flops(patches.shape[1], batch["input_ids"].shape[1])
        )
        step += 1
        train_time += time.perf_counter() - t
        if total is None and step == FIT_STEPS:
            per_step = train_time / step
            per_eval = eval_time  # the step-0 evaluation
            left = budget - (time.perf_counter() - started) if budget else 600.0
            total = ranks.agree(step + max(int(left / (per_step + per_eval / every)), 1))
            say(f"schedule fitted to the budget: {total} steps ({per_step * 1000:.0f} ms a step)")
        if step % every == 0 and step != total:
            record(step)
    if step:  # (step 0 was recorded first)
        record(step)
    if not ranks.lead:
        return {}
    curve_file.close()
    torch.save(model.state_dict(), out / "model.pt")  # starts a later stage of the recipe
    summary = {
        "steps": step,
        "schedule": total,
        "minutes": round((time.perf_counter() - started) / 60, 2),
        "train_ms_per_step": round(1000 * train_time / max(step, 1), 1),
        "parameters": model.num_parameters(),
        "final": curve[-1],
        "best_em": max(r["em"] for r in curve),
    }
    summary["breakdown"] = breakdown(last_read)  # where the last reading missed
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text(table(curve) + "\n" + breakdown_table(summary["breakdown"]))
    plot(curve, out / "curve.png")
    return summary


def run_recipe(recipe: str, overrides: list[str], only: list[str] | None, threads: int | None) -> list[dict]:
    """Run a recipe's stages in order, each from the weights of the one before it (an `init=` among `overrides`
    starts the first), into `<out>/<stage>/`; `only` runs those stages (the one before the first of them must
    have run: its weights start it). Every stage's config is composed and checked before the first trains."""
    stages = recipe_stages(recipe)
    names = [s["name"] for s in stages]
    if only and set(only) - set(names):
        raise ValueError(f"--stages {','.join(only)}: the recipe's stages are {', '.join(names)}")
    root = Path(compose(overrides).out)
    weights = next((o.split("=", 1)[1] for o in overrides if o.startswith("init=")), None)
    plan = []
    for stage in stages:
        chosen = [*stage["overrides"], *(o for o in overrides if not o.startswith("init="))]
        chosen += [f"out={root / stage['name']}", *([f"init={weights}"] if weights else [])]
        plan.append((stage["name"], compose(chosen)))
        weights = str(root / stage["name"] / "model.pt")  # what this stage writes starts the next
    plan = [p for p in plan if not only or p[0] in only]
    start = plan[0][1].init
    if start and not Path(start).is_file():
        raise ValueError(
            f"stage {plan[0][0]} starts from {start}, which does not exist (run the stage before it)"
        )
    summaries = []
    for name, cfg in plan:
        print(f"stage {name}: {' '.join(o for o in stages[names.index(name)]['overrides'])}", flush=True)
        summaries.append({"stage": name, **run(cfg, None, threads)})
    return summaries


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.learning",
        description="Train a model from scratch on snippets and read held-out ones every N steps.",
        epilog="overrides: key=value pairs of configs/tools/learning.yaml (e.g. text.kind=words steps=3000)",
    )
    ap.add_argument(
        "--minutes", type=float, default=None, help="time budget (the schedule fits it without steps=)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--recipe", default=None, help="run a recipe's stages (configs/tools/recipes/<name>.yaml)"
    )
    ap.add_argument("--stages", default=None, help="with --recipe: comma-separated stages to run")
    ap.add_argument("--compare", nargs="+", metavar="RUN", help="finished runs' folders: loss against FLOPs")
    ap.add_argument("--plot", default="runs/learning/flops.png", help="with --compare: the PNG written")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.compare:
        try:
            print(compare(args.compare, Path(args.plot)), end="")
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {args.plot} (validation loss / exact match at each budget)")
        return 0
    if args.recipe:
        try:
            only = args.stages.split(",") if args.stages else None
            done = run_recipe(args.recipe, args.overrides, only, args.threads)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for s in done:
            f = s["final"]
            print(f"{s['stage']}: {s['steps']} steps, {s['minutes']:.1f} min, exact {100 * f['em']:.1f}%, "
                  f"CER {f['cer']:.3f}, control exact {100 * f['control_em']:.1f}%")  # fmt: skip
        return 0
    try:
        cfg = compose(args.overrides)
        if cfg.steps is None and not args.minutes:
            raise ValueError("give --minutes or steps= (steps=0: evaluate init= only)")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = run(cfg, args.minutes, args.threads)
    print((Path(cfg.out) / "table.md").read_text())
    final = summary["final"]
    print(
        f"| {cfg.model.preset} {summary['parameters'] / 1e6:.2f}M | {cfg.text.kind} {list(cfg.text.length)} | "
        f"lr {cfg.optim.lr}, batch {cfg.batch}, seed {cfg.seed} | {summary['steps']}/{summary['schedule']} | "
        f"{summary['minutes']:.1f} | {final['cer']:.3f} | {100 * final['em']:.1f}% | "
        f"{final['control_cer']:.3f} / {100 * final['control_em']:.1f}% |"
    )
    print(f"wrote {Path(cfg.out) / 'curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
