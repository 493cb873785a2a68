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
in the worker; a sample that cannot be decoded or encoded is skipped and counted by reason, over-long
targets are truncated and counted.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from data_pipeline.storage import Manifest, UnreadableShard, iter_samples, read_manifest
from model.kosmos import IGNORE_INDEX
from model.processor import ImageProcessor
from model.task_format import LayoutError, TaskFormat

IMAGE_EXTS = ("png", "jpg", "webp")


@dataclass
class SourceSpec:
    name: str
    root: str  # a build's output folder or URL (manifest.json inside): see data_pipeline/storage.py
    weight: float
    task: str  # "ocr" or "md": which target a sample of this source is trained on

    def __post_init__(self):
        self.root = str(self.root)


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


class Encoder:
    """A raw shard sample → model inputs (image processing + task serialisation), or a skip reason."""

    def __init__(self, fmt: TaskFormat, processor: ImageProcessor):
        self.fmt, self.processor = fmt, processor

    def __call__(self, spec: SourceSpec, sample: dict) -> dict | str:
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            return "no_image"
        try:
            image = Image.open(io.BytesIO(sample[ext]))
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError):
            return "bad_image"
        try:
            page = self.processor(image)
        except ValueError:
            return "bad_image"
        try:
            if spec.task == "ocr":
                if "layout.json" not in sample:
                    return "no_layout"
                layout = json.loads(sample["layout.json"])
                enc = self.fmt.encode_layout(
                    layout["lines"], (image.width, image.height), (page.width, page.height)
                )
            else:
                if "md" not in sample:
                    return "no_markdown"
                enc = self.fmt.encode_markdown(sample["md"].decode("utf-8"))
        except (LayoutError, json.JSONDecodeError, UnicodeDecodeError, KeyError):
            return "bad_label"
        return {
            "key": sample["__key__"],
            "source": spec.name,
            "task": enc.task,
            "truncated": enc.truncated,
            "flattened_patches": page.flattened_patches,
            **enc.tensors(),
        }


def collate(items: list[dict], pad_id: int) -> dict:
    """Right-padded batch: no attention mask is needed under the causal mask (see model/decoder.py)."""
    n = max(len(it["input_ids"]) for it in items)

    def pad(key, value):
        return torch.stack(
            [torch.nn.functional.pad(it[key], (0, n - len(it[key])), value=value) for it in items]
        )

    return {
        "flattened_patches": torch.stack([it["flattened_patches"] for it in items]),
        "input_ids": pad("input_ids", pad_id),
        "labels": pad("labels", IGNORE_INDEX),
        "image_embeds_position_mask": pad("image_embeds_position_mask", 0),
        "keys": [it["key"] for it in items],
        "sources": [it["source"] for it in items],
        "tasks": [it["task"] for it in items],
    }


class BatchStream(torch.utils.data.IterableDataset):
    """Micro-batches of one rank, made in DataLoader workers; each batch carries the state of its slots.

    The data is cut into `slots` independent streams. Worker role w of rank r owns the slots s with
    s mod (world x workers) = r x workers + w and takes one sample from each in turn, so every slot gives the
    same number of samples per step: the set of samples in a global batch does not depend on how many ranks
    or workers share the slots (given `slots` divisible by ranks x workers)."""

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
    ):
        self.sources, self.fmt, self.processor = sources, fmt, processor
        self.micro_batch, self.seed, self.rank, self.world, self.workers = (
            micro_batch,
            seed,
            rank,
            world,
            workers,
        )
        self.roles = max(workers, 1)
        self.slots = slots or world * self.roles
        if self.slots % (world * self.roles):
            raise ValueError(
                f"data.slots={self.slots} must be a multiple of ranks x workers = {world * self.roles}"
            )
        resume = resume or {}
        self.states = {int(k): v for k, v in resume.get("states", {}).items()}
        # DataLoader always starts with its worker 0: worker w plays the role that comes after the one that
        # made the last batch taken before the checkpoint, so the batch order continues unchanged.
        self.rotate = resume.get("next_role", 0)

    def my_slots(self, role: int) -> list[int]:
        group = self.world * self.roles
        return [s for s in range(self.slots) if s % group == self.rank * self.roles + role]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        role = ((info.id if info is not None else 0) + self.rotate) % self.roles
        streams = {}
        for slot in self.my_slots(role):
            saved = self.states.get(slot)
            stream = MixtureStream(
                self.sources, self.seed, slot, self.slots, StreamState.from_dict(saved) if saved else None
            )
            streams[slot] = (stream, iter(stream))
        encode = Encoder(self.fmt, self.processor)
        items = []
        for turn in itertools.count():
            slot = list(streams)[turn % len(streams)]
            stream, samples = streams[slot]
            while True:  # a slot always gives one good sample per turn: bad ones are counted and passed over
                spec, sample = next(samples)
                out = encode(spec, sample)
                if not isinstance(out, str):
                    break
                stream.state.counts[out] += 1
                if sum(stream.state.counts.values()) <= 20:  # name the first few; all are counted
                    print(
                        f"warning: {spec.name}: sample {sample['__key__']}: {out}; skipped", file=sys.stderr
                    )
            if out["truncated"]:
                stream.state.counts["truncated"] += 1
            items.append(out)
            if len(items) == self.micro_batch:
                batch = collate(items, self.fmt.tok.pad_id)
                batch["loader_state"] = {
                    "role": role,
                    "states": {k: st.state.to_dict() for k, (st, _) in streams.items()},
                }
                yield batch
                items = []


def make_loader(dataset: BatchStream) -> torch.utils.data.DataLoader:
    """Workers take turns in order, so the batch sequence is the same on every run."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=dataset.workers,
        persistent_workers=False,
        prefetch_factor=2 if dataset.workers else None,
        multiprocessing_context="spawn" if dataset.workers else None,
    )


class LoaderState:
    """What a checkpoint stores for one rank: the state of each of its slots as of the last batch taken."""

    def __init__(self, world: int, workers: int, slots: int):
        self.world, self.workers, self.slots = world, max(workers, 1), slots
        self.states: dict[int, dict] = {}
        self.last_role = -1

    def update(self, batch: dict) -> None:
        info = batch["loader_state"]
        self.states.update(info["states"])
        self.last_role = info["role"]

    def to_dict(self) -> dict:
        return {
            "world": self.world,
            "workers": self.workers,
            "slots": self.slots,
            "states": {str(k): v for k, v in self.states.items()},
            "next_role": (self.last_role + 1) % self.workers,
        }

    @staticmethod
    def resume(saved: list[dict] | dict, world: int, workers: int, slots: int) -> dict:
        """The `resume` argument of `BatchStream` from the loader states the ranks saved. Slots carry the
        streams, so another world size or worker count can resume them as long as the slot count is the
        same and the checkpoint was taken between steps (as the trainer takes it)."""
        saved = saved if isinstance(saved, list) else [saved]
        first = saved[0]
        if first["slots"] != slots:
            raise ValueError(
                f"the checkpoint's loader had {first['slots']} data slots; this run has {slots}: keep data.slots, "
                "or set trainer.reset_loader=true to start the data stream afresh"
            )
        moved = first["world"] != world or first["workers"] != max(workers, 1)
        if moved and any(s["next_role"] != 0 for s in saved):
            raise ValueError(
                f"the checkpoint was taken in the middle of a round of {first['workers']} loader workers; resume it "
                f"with world size {first['world']} and {first['workers']} workers, or set trainer.reset_loader=true"
            )
        states = {int(k): v for s in saved for k, v in s["states"].items()}
        return {"states": states, "next_role": 0 if moved else first["next_role"]}
