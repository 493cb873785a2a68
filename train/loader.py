"""Training data: shards found through manifests, a per-source weighted mixture, a deterministic shuffle by
(seed, epoch) split over (rank, worker), and a state that resumes the stream exactly.

Sources, manifests and shards may be local or behind URLs (`data_pipeline/storage.py`); a manifest is read
once per process and held as arrays, and no shard is looked at before it is read. Every (rank, worker)
pair owns a disjoint part of each source: with at least as many shards as slots, shard i of a seeded
per-epoch order belongs to slot i mod slots; with fewer, the order's samples are cut into one range per slot.
A slot reads its part in order and draws the source of each sample from its own seeded generator. Its
state — per source: epoch, position in its part, samples consumed in the current shard; the mixture
generator; counters — travels with every batch, so the trainer always holds the state that matches the
last batch it took, and a checkpoint stores it. A shard that cannot be read (after retries, when remote) is
named on stderr, counted as `unreadable_shard`, and passed over. Image processing and tokenisation happen
in the worker (`train/samples.py`); a sample that cannot be decoded or encoded is skipped and counted by reason, over-long
targets are truncated and counted.
"""

from __future__ import annotations

import functools
import random
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from data_pipeline.manifest import Manifest, read_manifest
from data_pipeline.storage import UnreadableShard, iter_samples
from model.processor import ImageProcessor
from model.task_format import TaskFormat
from train.batch_plan import batch_plan
from train.samples import Encoder, SourceSpec, label_size, micro_batches

_PERMS: dict[tuple, np.ndarray] = {}


def shard_permutation(seed: int, name: str, epoch: int, n: int) -> np.ndarray:
    """The seeded order of a source's `n` shards in an epoch, computed once per process (every slot of the
    process deals from it)."""
    key = (seed, name, epoch, n)
    if key not in _PERMS:
        if len(_PERMS) >= 64:  # epochs passed are not visited again
            _PERMS.pop(next(iter(_PERMS)))
        rng = np.random.default_rng(np.random.SeedSequence([seed % 2**63, zlib.crc32(name.encode()), epoch]))
        _PERMS[key] = rng.permutation(n).astype(np.int64)
    return _PERMS[key]


class _Dealt:
    """Whole shards dealt round-robin: the (shard, 0, its samples) segments of one slot, computed when asked
    (a slot of a source of millions of shards holds a view of the order, not a list)."""

    def __init__(self, manifest: Manifest, picked: np.ndarray):
        self.manifest, self.picked = manifest, picked

    def __len__(self) -> int:
        return len(self.picked)

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        shard = int(self.picked[i])
        return shard, 0, int(self.manifest.nsamples[shard])


def slot_segments(manifest: Manifest, perm: np.ndarray, slot: int, slots: int):
    """What one slot reads of a source in an epoch: a sequence of (shard, first sample, end sample). With at
    least as many shards as slots, whole shards dealt round-robin from the shuffled order; with fewer, the
    shuffled order's samples cut into `slots` consecutive ranges, so each sample is read once in all."""
    if len(perm) >= slots:
        return _Dealt(manifest, perm[slot::slots])
    counts = manifest.nsamples[perm]
    ends = np.cumsum(counts)
    starts = ends - counts
    total = int(ends[-1])
    if total >= slots:
        lo, hi = slot * total // slots, (slot + 1) * total // slots
    else:  # fewer samples than slots: each slot reads one, some are read by several
        lo, hi = slot % total, slot % total + 1
    return [
        (int(perm[j]), max(lo - int(starts[j]), 0), min(hi, int(ends[j])) - int(starts[j]))
        for j in np.nonzero((starts < hi) & (ends > lo))[0]
    ]


@dataclass
class StreamState:
    """Where one (rank, worker) slot is: per source (epoch, position in its shard order, samples read in the
    current shard), the mixture generator's state, and counters of skipped samples by reason."""

    sources: dict[str, list[int]] = field(default_factory=dict)
    rng: object = None
    counts: Counter = field(default_factory=Counter)
    samples: int = 0

    def to_dict(self) -> dict:
        return {
            "sources": {k: list(v) for k, v in self.sources.items()},
            "rng": self.rng,
            "counts": dict(self.counts),
            "samples": self.samples,
        }

    @classmethod
    def from_dict(cls, d: dict) -> StreamState:
        return cls(
            {k: list(v) for k, v in d["sources"].items()},
            _tuplify(d["rng"]),
            Counter(d["counts"]),
            d["samples"],
        )


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


class MixtureStream:
    """The sample stream of one (rank, worker) slot."""

    def __init__(
        self, sources: list[SourceSpec], seed: int, slot: int, slots: int, state: StreamState | None = None
    ):
        self.sources = sources
        self.seed, self.slot, self.slots = seed, slot, slots
        self.manifests = {s.name: read_manifest(s.root) for s in sources}  # once per process
        self.state = state or StreamState({s.name: [0, 0, 0] for s in sources})
        self.rng = random.Random(f"{seed}/mixture/{slot}")
        if self.state.rng is not None:
            self.rng.setstate(self.state.rng)
        self._iters: dict[str, Iterator[dict]] = {}

    def _order(self, name: str, epoch: int):
        manifest = self.manifests[name]
        perm = shard_permutation(self.seed, name, epoch, len(manifest))
        return slot_segments(manifest, perm, self.slot, self.slots)

    def _source_iter(self, name: str) -> Iterator[dict]:
        pos = self.state.sources[name]
        manifest = self.manifests[name]
        empty_epochs = 0
        while True:
            order = self._order(name, pos[0])
            while pos[1] < len(order):
                shard, first, end = order[pos[1]]
                pos[2] = max(pos[2], first)
                try:
                    for sample in iter_samples(
                        manifest.url(shard), skip=pos[2], expected=int(manifest.nsamples[shard])
                    ):
                        if pos[2] >= end:
                            break
                        pos[2] += 1
                        if manifest.dropped(sample["__key__"]):
                            continue
                        empty_epochs = 0
                        yield sample
                except UnreadableShard as e:
                    self.state.counts["unreadable_shard"] += 1
                    print(
                        f"warning: {e.url}: unreadable shard ({e.reason}); going on with the next one",
                        file=sys.stderr,
                        flush=True,
                    )
                pos[1], pos[2] = pos[1] + 1, 0
            pos[0], pos[1], pos[2] = pos[0] + 1, 0, 0
            empty_epochs += 1
            if empty_epochs > 2:
                raise RuntimeError(f"source {name}: no readable samples for this slot")

    def __iter__(self) -> Iterator[tuple[SourceSpec, dict]]:
        weights = [s.weight for s in self.sources]
        while True:
            spec = self.rng.choices(self.sources, weights)[0]
            if spec.name not in self._iters:
                self._iters[spec.name] = self._source_iter(spec.name)
            sample = next(self._iters[spec.name])
            self.state.rng = self.rng.getstate()
            self.state.samples += 1
            yield spec, sample


class SlotWindow:
    """One slot's samples, `per_slot` a step, through a look-ahead window: `window` samples read ahead, ordered
    by their target's length in tokens (from the label alone), and given out `per_slot` at a time from places
    of that order visited in a seeded random order that is the same for every slot. At each step every slot gives samples from the same place
    of its own window, so a step's samples have similar lengths (little padding in its micro batches) while
    the steps come in no particular order of length. The state is the slot's stream as of the window's start
    and how many places were given: a resumed slot reads its window again and goes on."""

    def __init__(
        self,
        stream: MixtureStream,
        seed: int,
        window: int,
        per_slot: int,
        size: Callable[[SourceSpec, dict], int],
        saved: dict | None = None,
    ):
        self.stream, self.samples, self.size = stream, iter(stream), size
        self.seed, self.per_slot = seed, per_slot
        self.window = max(window, per_slot) // per_slot * per_slot
        self.index, self.given = (saved or {}).get("window", (0, 0))
        self.start = stream.state.to_dict()
        self.held: list | None = None

    def state(self) -> dict:
        return dict(self.start, counts=dict(self.stream.state.counts), window=[self.index, self.given])

    def take(self) -> list[tuple[SourceSpec, dict]]:
        if self.held is None:
            self.held = [next(self.samples) for _ in range(self.window)]
            sizes = (
                [self.size(spec, sample) for spec, sample in self.held] if self.window > self.per_slot else []
            )
            self.order = (
                sorted(range(self.window), key=lambda i: (sizes[i], i)) if sizes else list(range(self.window))
            )
            self.places = list(range(self.window // self.per_slot))
            random.Random(f"{self.seed}/window/{self.index}").shuffle(self.places)
        place = self.places[self.given]
        out = [self.held[i] for i in self.order[place * self.per_slot : (place + 1) * self.per_slot]]
        self.given += 1
        if self.given == len(self.places):  # the next window starts where this one's reading ended
            self.index, self.given, self.held = self.index + 1, 0, None
            self.start = self.stream.state.to_dict()
        return out


class BatchStream(torch.utils.data.IterableDataset):
    """The samples of one rank, step by step, made in DataLoader workers.

    The rank's slots (see `BatchPlan`) are shared among its loader workers (the j-th to worker j mod workers).
    Each worker yields one part per step: `per_slot` encoded samples of each of its slots, and the slots'
    states after them. `make_loader` takes one part from each worker in turn, orders the step's samples by
    length (ties by slot) and cuts them into the plan's micro batches, so the workers' count changes nothing
    and a checkpoint, taken between steps, resumes on any world size or worker count with the same slots."""

    def __init__(
        self,
        sources: list[SourceSpec],
        fmt: TaskFormat,
        processor: ImageProcessor,
        micro_batch: int,
        seed: int,
        rank: int,
        world: int,
        workers: int,
        resume: dict | None = None,
        slots: int | None = None,
        global_batch: int | None = None,
        patch_dtype: torch.dtype = torch.float32,
        window: int = 1,
    ):
        self.sources, self.fmt, self.processor, self.patch_dtype = sources, fmt, processor, patch_dtype
        self.seed, self.rank, self.world, self.workers = seed, rank, world, workers
        self.plan = batch_plan(global_batch or micro_batch * world, micro_batch, world, slots)
        self.slots = self.plan.slots
        self.roles = max(workers, 1)
        self.states = {int(k): v for k, v in (resume or {}).get("states", {}).items()}
        self.window = int(window or 1)
        if self.window > 1 and self.window % self.plan.per_slot:
            raise ValueError(
                f"data.length_window={self.window} must be a multiple of the samples a slot gives a step "
                f"({self.plan.per_slot})"
            )

    def role_slots(self, role: int) -> list[int]:
        return list(self.plan.rank_slots(self.rank))[role :: self.roles]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        role = info.id if info is not None else 0
        windows = {}
        for slot in self.role_slots(role):
            saved = self.states.get(slot)
            stream = MixtureStream(
                self.sources, self.seed, slot, self.slots, StreamState.from_dict(saved) if saved else None
            )
            size = functools.partial(label_size, self.fmt)
            windows[slot] = SlotWindow(stream, self.seed, self.window, self.plan.per_slot, size, saved)
        encode = Encoder(self.fmt, self.processor, self.patch_dtype)
        while True:
            items = []
            for slot, win in windows.items():
                counts = win.stream.state.counts
                for n, (spec, sample) in enumerate(win.take()):
                    out = encode(spec, sample)
                    if isinstance(out, str):  # counted and left out: the step has one sample fewer
                        counts[out] += 1
                        if sum(counts.values()) <= 20:  # name the first few; all are counted
                            print(
                                f"warning: {spec.name}: sample {sample['__key__']}: {out}; skipped",
                                file=sys.stderr,
                            )
                        continue
                    if out["truncated"]:
                        counts["truncated"] += 1
                    out["order"] = (slot, n)
                    items.append(out)
            yield {"items": items, "states": {k: win.state() for k, win in windows.items()}}


def _die_with_parent(_worker_id: int) -> None:
    """A loader worker dies with its rank's process, however that ends: a rank leaves with `os._exit` under
    the launcher, and a worker left behind would hold the launcher's pipes."""
    from data_pipeline.runner import die_with_parent

    die_with_parent()


def make_loader(dataset: BatchStream, pin_memory: bool = False) -> Iterator[dict]:
    """The rank's micro batches, each carrying the loader state as of the end of its step (the trainer
    checkpoints between steps). Workers take turns in order, one part each per step. `pin_memory` (on a GPU):
    the tensors in page-locked memory, so their copies to the device can be asynchronous."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=dataset.workers,
        persistent_workers=False,
        prefetch_factor=2 if dataset.workers else None,
        multiprocessing_context="spawn" if dataset.workers else None,
        worker_init_fn=_die_with_parent if dataset.workers else None,
    )

    parts = iter(loader)  # now: it draws its seed from torch's generator, as the run being resumed did

    def steps():
        template = None  # a sample kept to stand in, with no target, for a step whose samples were all bad
        while True:
            got = [next(parts) for _ in range(dataset.roles)]
            states = {k: v for part in got for k, v in part["states"].items()}
            items = [it for part in got for it in part["items"]]
            template = items[0] if items else template
            for batch in micro_batches(items, dataset.plan.accumulation, dataset.fmt.tok.pad_id, template):
                if pin_memory:
                    batch.update({k: v.pin_memory() for k, v in batch.items() if isinstance(v, torch.Tensor)})
                batch["loader_state"] = {"states": states}
                yield batch

    return steps()


class LoaderState:
    """What a checkpoint stores for one rank: the state of each of its slots as of the last step taken."""

    def __init__(self, world: int, workers: int, slots: int):
        self.world, self.workers, self.slots = world, max(workers, 1), slots
        self.states: dict[int, dict] = {}

    def update(self, batch: dict) -> None:
        self.states.update(batch["loader_state"]["states"])

    def to_dict(self) -> dict:
        return {
            "world": self.world,
            "workers": self.workers,
            "slots": self.slots,
            "states": {str(k): v for k, v in self.states.items()},
        }

    @staticmethod
    def resume(saved: list[dict] | dict, world: int, workers: int, slots: int) -> dict:
        """The `resume` argument of `BatchStream` from the loader states the ranks saved. Slots carry the
        streams, so any world size or worker count resumes them as long as the slot count is the same."""
        saved = saved if isinstance(saved, list) else [saved]
        if saved[0]["slots"] != slots:
            raise ValueError(
                f"the checkpoint's loader had {saved[0]['slots']} data slots; this run has {slots}: keep data.slots "
                "(and the global batch), or set trainer.reset_loader=true to start the data stream afresh"
            )
        return {"states": {int(k): v for s in saved for k, v in s["states"].items()}}
