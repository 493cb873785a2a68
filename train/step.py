"""One training step over a rank's micro batches, and the micro batches made ahead by a thread."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import Counter

import torch

from train import faults

MODEL_INPUTS = ("flattened_patches", "input_ids", "labels", "image_embeds_position_mask")


def train_step(
    engine, micro: list[dict], world: int, use_bf16: bool, guard=None, step: int = 0
) -> tuple[float, list]:
    """One optimizer step over this rank's micro-batches; returns the global batch's loss and
    per-micro-batch details for the metrics.

    The loss of a step is the summed token loss over the global batch's target tokens, whatever the split
    into ranks and micro-batches: the same global batch gives the same update on any world size. The global
    loss is known before the last backward, so `guard` (`train.guard.BadSteps`) can veto the update."""
    accumulation = len(micro)
    rank = torch.distributed.get_rank()
    local_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    totals = torch.tensor([float(local_tokens), 0.0], dtype=torch.float64, device=engine.device)
    torch.distributed.all_reduce(totals[:1])
    scale = accumulation * world / max(totals[0].item(), 1.0)  # DeepSpeed divides by both again
    factor = faults.loss_factor(step, rank)
    per, sums = [], 0.0
    for i, batch in enumerate(micro):
        # patches come in the training dtype (cast in the loader's workers), pinned on a GPU
        inputs = {k: batch[k].to(engine.device, non_blocking=True) for k in MODEL_INPUTS}
        out = engine(**inputs, compute_logits=False)
        loss_sum = out.loss_sum * factor if factor != 1.0 else out.loss_sum
        sums += loss_sum.detach().double().item()
        if i == accumulation - 1:  # the global loss, before the update can happen
            totals[1] = sums
            torch.distributed.all_reduce(totals[1:])
            if guard is not None:
                guard.check_loss(totals[1].item() / max(totals[0].item(), 1.0))
            faults.poison_gradient(engine.module, step, rank)
        engine.backward(loss_sum * scale)
        engine.step()
        per.append(
            (
                batch["sources"],
                batch["tasks"],
                out.num_target_tokens,
                batch,
                out.sample_loss_sums.tolist(),
                out.sample_tokens.tolist(),
            )
        )
    return totals[1].item() / max(totals[0].item(), 1.0), per


class Prefetch:
    """`items` made ahead by a thread, up to `depth` of them: the next step's micro batches are ordered,
    collated and pinned while this step computes. An error in the thread is raised where the item was
    expected. `close()` stops the thread and the loader behind it (a rollback opens another)."""

    def __init__(self, items, depth: int):
        self.items = items
        self.queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._fill, daemon=True, name="literate-prefetch")
        self.thread.start()

    def _fill(self) -> None:
        try:
            for item in self.items:
                while not self.stopped.is_set():
                    try:
                        self.queue.put((True, item), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self.stopped.is_set():
                    return
        except BaseException as e:  # handed to the consumer
            self.queue.put((False, e))

    def __iter__(self):
        return self

    def __next__(self):
        ok, item = self.queue.get()
        if not ok:
            raise item
        return item

    def close(self) -> None:
        self.stopped.set()
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.queue.get(timeout=0.5)
        close = getattr(self.items, "close", None)
        if close is not None:
            close()  # the loader's generator ends, and with it its DataLoader's workers


def skipped_samples(loader_state, world: int) -> dict[str, int]:
    """The loader counters of all ranks so far, by reason: skipped samples, truncated targets, corrupt shards."""
    mine = Counter()
    for state in loader_state.states.values():
        mine.update(state["counts"])
    if world == 1:
        return dict(mine)
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, dict(mine))
    total = Counter()
    for counts in gathered:
        total.update(counts)
    return dict(total)
