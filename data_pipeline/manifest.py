"""A build's `manifest.json` (webdataset's wids shard-index format): written once a build's tasks are done
(every finished shard with its sample count, the totals, the dedup drop list's name) and read back by everyone
who reads a build (the loader, evaluation, the planner), held compactly: a build of millions of shards costs
arrays, not a dict per shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipeline.storage import join, output_exists, read_bytes, read_text, write_text
from data_pipeline.writer import ShardStats, is_finished, read_stats

_ENTRY = re.compile(rb"\{[^{}]*\}")
_URL = re.compile(rb'"url"\s*:\s*"((?:[^"\\]|\\.)*)"')
_NSAMPLES = re.compile(rb'"nsamples"\s*:\s*(\d+)')
_SOURCE = re.compile(rb'"source"\s*:\s*"((?:[^"\\]|\\.)*)"')
_DROP = re.compile(rb'"drop_list"\s*:\s*"((?:[^"\\]|\\.)*)"')


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def drop_hashes(keys) -> np.ndarray:
    """The sorted 64-bit hashes of dropped keys, as `Manifest.dropped` searches them."""
    return np.array(sorted({key_hash(k) for k in keys}), dtype=np.uint64)


@dataclass
class Manifest:
    """A build's finished shards: their names (fixed-width bytes) and sample counts, and the 64-bit hashes
    of the keys its dedup pass dropped (sorted)."""

    root: str
    names: np.ndarray  # dtype S<n>
    nsamples: np.ndarray  # int64
    drop: np.ndarray  # uint64, sorted
    source: str | None = None
    drop_list: str | None = None  # the drop list's path inside the build, as the manifest names it

    def __len__(self) -> int:
        return len(self.names)

    def url(self, i: int) -> str:
        return join(self.root, self.names[i].decode())

    def dropped(self, key: str) -> bool:
        if not len(self.drop):
            return False
        h = np.uint64(key_hash(key))
        i = np.searchsorted(self.drop, h)
        return bool(i < len(self.drop) and self.drop[i] == h)

    @property
    def samples(self) -> int:
        return int(self.nsamples.sum())


def parse_manifest(root: str, data: bytes, drop_keys: list[str] = ()) -> Manifest:
    """A manifest from the bytes of `manifest.json` (wids-shard-index-v1), without a dict per shard."""
    start = data.find(b'"shardlist"')
    if start < 0:
        raise ValueError(f"{join(root, 'manifest.json')}: not a shard index (no shardlist)")
    end = data.find(b"]", start)
    names, counts = [], []
    for entry in _ENTRY.finditer(data, start, end if end > 0 else len(data)):
        text = entry.group()
        url, n = _URL.search(text), _NSAMPLES.search(text)
        if url is None or n is None:
            raise ValueError(f"{join(root, 'manifest.json')}: a shard entry without url or nsamples")
        if int(n.group(1)) > 0:
            names.append(url.group(1))
            counts.append(int(n.group(1)))
    head = data[:start] + data[end:] if end > 0 else data[:start]  # all but the shard list
    source, listed = _SOURCE.search(head), _DROP.search(head)
    return Manifest(
        root,
        np.array(names, dtype=bytes) if names else np.zeros(0, dtype="S1"),
        np.array(counts, dtype=np.int64),
        drop_hashes(drop_keys),
        source.group(1).decode() if source else None,
        listed.group(1).decode() if listed else None,
    )


_MANIFESTS: dict[str, Manifest] = {}


def read_manifest(root: str | os.PathLike) -> Manifest:
    """The manifest of the build at `root` (and its drop list), read once per process."""
    root = str(root)
    if root in _MANIFESTS:
        return _MANIFESTS[root]
    url = join(root, "manifest.json")
    try:
        data = read_bytes(url)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{url}: no manifest (build the shards first, or check data.sources)"
        ) from None
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{url}: cannot be read ({e})") from None
    manifest = parse_manifest(root, data)
    if manifest.drop_list:
        import orjson

        keys = orjson.loads(read_bytes(join(root, manifest.drop_list)))["keys"]
        manifest.drop = drop_hashes(keys)
    if not len(manifest):
        raise FileNotFoundError(f"{url}: names no shard with samples")
    _MANIFESTS[root] = manifest
    return manifest


def write_manifest(out: str | Path, source: str, n_tasks: int) -> dict:
    """`manifest.json`: every finished shard with its sample count (wids shard-index format) and totals."""
    shards, totals = [], ShardStats(shard="total")
    for i in range(n_tasks):
        if not is_finished(out, i):
            continue
        s = read_stats(out, i)
        shards.append({"url": s.shard, "nsamples": s.samples})
        for k in ("docs", "pages", "samples", "bytes"):
            setattr(totals, k, getattr(totals, k) + getattr(s, k))
        totals.seconds += s.seconds
        totals.errors.update(s.errors)
        totals.skips.update(s.skips)
    manifest = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": source,
        "source": source,
        "shardlist": shards,
        "tasks": n_tasks,
        "finished": len(shards),
        "totals": {k: v for k, v in totals.to_dict().items() if k not in ("shard", "error_examples")},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if output_exists(out, "dedup/drop.json"):
        manifest["drop_list"] = "dedup/drop.json"
        manifest["dropped"] = json.loads(read_text(out, "dedup/drop.json"))["count"]
    write_text(out, "manifest.json", json.dumps(manifest, indent=1))
    return manifest
