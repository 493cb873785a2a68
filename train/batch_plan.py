"""How a global batch is cut: data slots, each rank's share, micro batches and gradient accumulation.

`batch_plan` is the one place the batch arithmetic lives; the loader deals its slots by it, the trainer's
set-up checks a config against it, and the capacity planner and the benchmarks size their runs with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPlan:
    """How a global batch is cut. The data is `slots` independent streams; each step takes `per_slot` samples
    from every slot, so a global batch holds the same samples whatever the number of ranks and workers. Slot s
    belongs to rank s mod world (ranks differ by at most one slot when the world does not divide the slots:
    the loss is normalised by the global batch's target tokens, so uneven ranks give the same update). Every
    rank runs `accumulation` micro batches of at most `micro` samples."""

    global_batch: int
    world: int
    slots: int
    per_slot: int
    accumulation: int
    micro: int

    def rank_slots(self, rank: int) -> range:
        return range(rank, self.slots, self.world)

    def rank_samples(self, rank: int) -> int:
        return len(self.rank_slots(rank)) * self.per_slot

    def describe(self) -> str:
        lo, hi = self.rank_samples(self.world - 1), self.rank_samples(0)
        if lo == hi == self.micro * self.accumulation:
            return f"micro {self.micro} x accumulation {self.accumulation} x {self.world} ranks"
        share = f"{lo}-{hi}" if lo != hi else str(hi)
        return (
            f"{self.world} ranks x {share} samples (accumulation {self.accumulation} of micro batches of up to "
            f"{self.micro})"
        )


def default_slots(global_batch: int, micro: int, world: int) -> int:
    """The fewest slots that fill the micro batches by themselves: the smallest divisor of the global batch that
    is at least its micro batches and the world size and leaves no rank more than 5% above the mean (slots are
    dealt whole); the global batch itself, one slot per sample, when no divisor does."""
    least = max(-(-global_batch // micro), world)
    return next(
        (
            n
            for n in range(least, global_batch + 1)
            if global_batch % n == 0 and -(-n // world) * world <= 1.05 * n
        ),
        global_batch,
    )


def batch_plan(global_batch: int, micro: int, world: int, slots: int | None = None) -> BatchPlan:
    """The plan of a global batch of `global_batch` samples on `world` ranks with micro batches of at most
    `micro` samples. `slots` defaults to one per micro batch (global / micro), or one per rank when there are
    more ranks, raised to a divisor of the global batch that deals evenly (`default_slots`): a slot then fills a
    micro batch by itself, from one place of its look-ahead window, and the global batches are the same on
    every world size that keeps that count. Raises ValueError when no plan exists (a slot count that does not
    divide the global batch, more ranks than slots)."""
    if global_batch < 1 or micro < 1 or world < 1:
        raise ValueError(
            f"batch {global_batch}, micro batch {micro} and {world} ranks must all be at least 1"
        )
    slots = int(slots or default_slots(global_batch, micro, world))
    if global_batch % slots:
        raise ValueError(
            f"data.slots={slots} must divide trainer.train_batch_size={global_batch}: every step takes the same "
            "number of samples from each slot (leave data.slots unset for the default)"
        )
    if world > slots:
        raise ValueError(
            f"{world} ranks but {slots} data slots: each rank needs at least one (raise data.slots)"
        )
    per_slot = global_batch // slots
    most = -(-slots // world) * per_slot
    accumulation = -(-most // micro)
    return BatchPlan(global_batch, world, slots, per_slot, accumulation, -(-most // accumulation))


def cut(items: list, parts: int) -> list[list]:
    """`items` in `parts` consecutive runs of near-equal size (some empty when there are fewer items)."""
    return [items[i * len(items) // parts : (i + 1) * len(items) // parts] for i in range(parts)]
