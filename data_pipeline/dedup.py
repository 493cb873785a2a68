"""MinHash near-duplicate removal over built shards (one source per output folder), in passes whose memory
does not grow with the corpus:

1. per shard: MinHash signatures of each sample's text (word 5-grams) → `dedup/sig/shard-N.npz`, and its LSH
   band hashes, routed by hash into `P` partitions → `dedup/buckets/part-P/shard-N.npy`;
2. per partition: samples sharing a band hash are candidates; a candidate pair is kept when the signatures
   agree on ≥ `threshold` of their values (the Jaccard estimate) → `dedup/edges/part-P.npy`;
3. union-find over the edges (memory ∝ duplicates, not corpus) → every cluster keeps its smallest key;
   the rest go to `dedup/drop.json`, which `manifest.json` points at and loaders apply.

Each pass is a function of one shard or one partition, so it runs on any executor; `deduplicate` runs
them with a local process pool.

    python -m data_pipeline.dedup <output dir> [--threshold 0.8] [--workers N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

from data_pipeline.schema import decode_sample, text_member
from data_pipeline.storage import iter_samples

NUM_PERM = 128
BANDS, ROWS = 16, 8  # P(candidate) = 1 - (1 - s^8)^16: 0.95 at s = 0.8, 0.24 at s = 0.6 (then verified)
PARTITIONS = 16
_MERSENNE = np.uint64((1 << 61) - 1)
_WORD = re.compile(r"\w+", re.UNICODE)


@lru_cache(maxsize=1)
def _permutations() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(1)
    a = rng.randint(1, np.iinfo(np.int64).max, size=NUM_PERM, dtype=np.int64).astype(np.uint64) % _MERSENNE
    b = rng.randint(0, np.iinfo(np.int64).max, size=NUM_PERM, dtype=np.int64).astype(np.uint64) % _MERSENNE
    return a, b


def minhash(text: str, n: int = 5) -> np.ndarray:
    """A 128-value MinHash signature of the text's word n-grams (lower-cased)."""
    words = _WORD.findall(text.lower())
    grams = {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))} if words else {""}
    hashes = np.array(
        [int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") for g in grams],
        dtype=np.uint64,
    )
    a, b = _permutations()
    with np.errstate(over="ignore"):
        perm = ((hashes[:, None] * a[None, :] + b[None, :]) % _MERSENNE) & np.uint64(0xFFFFFFFF)
    return perm.min(axis=0).astype(np.uint32)


def shard_texts(url) -> list[tuple[str, str]]:
    """(key, text) of every sample in a shard (a path or URL): layout line texts, else the markdown."""
    out = []
    for members in iter_samples(url, wanted=text_member):
        sample = decode_sample(members, errors="replace")
        out.append((sample.key, sample.text()))
    return out


def signatures_pass(out: Path, shard: int) -> int:
    """Pass 1 for one shard; returns its sample count."""
    from data_pipeline.writer import shard_name

    name = shard_name(shard)
    items = shard_texts(out / f"{name}.tar")
    sig = np.stack([minhash(t) for _, t in items]) if items else np.zeros((0, NUM_PERM), np.uint32)
    d = out / "dedup"
    (d / "sig").mkdir(parents=True, exist_ok=True)
    np.savez(d / "sig" / f"{name}.npz", keys=np.array([k for k, _ in items], dtype=object), sig=sig)
    bands = sig.reshape(len(items), BANDS, ROWS)
    band_hash = np.array(
        [
            [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") for row in doc]
            for doc in bands
        ],
        dtype=np.uint64,
    ).reshape(len(items), BANDS)
    for part in range(PARTITIONS):
        rows, band_ids = np.nonzero((band_hash % np.uint64(PARTITIONS)) == part) if len(items) else ([], [])
        rec = np.zeros(len(rows), dtype=[("band", "u1"), ("hash", "u8"), ("shard", "u4"), ("row", "u4")])
        rec["band"], rec["shard"], rec["row"] = band_ids, shard, rows
        rec["hash"] = band_hash[rows, band_ids] if len(rows) else []
        pdir = d / "buckets" / f"part-{part:03d}"
        pdir.mkdir(parents=True, exist_ok=True)
        np.save(pdir / f"{name}.npy", rec)
    return len(items)


def edges_pass(out: Path, part: int, threshold: float) -> int:
    """Pass 2 for one partition; returns the number of verified pairs."""
    from data_pipeline.writer import shard_name

    pdir = out / "dedup" / "buckets" / f"part-{part:03d}"
    recs = [np.load(f) for f in sorted(pdir.glob("*.npy"))]
    rec = (
        np.concatenate(recs)
        if recs
        else np.zeros(0, dtype=[("band", "u1"), ("hash", "u8"), ("shard", "u4"), ("row", "u4")])
    )
    rec = rec[np.lexsort((rec["row"], rec["shard"], rec["hash"], rec["band"]))]

    @lru_cache(maxsize=64)
    def sig_of(shard: int) -> np.ndarray:
        return np.load(out / "dedup" / "sig" / f"{shard_name(shard)}.npz", allow_pickle=True)["sig"]

    pairs = set()
    starts = np.flatnonzero(
        np.r_[True, (rec["band"][1:] != rec["band"][:-1]) | (rec["hash"][1:] != rec["hash"][:-1])]
    )
    ends = np.r_[starts[1:], len(rec)]
    for s, e in zip(starts, ends, strict=True):
        if e - s < 2:
            continue
        first = (int(rec["shard"][s]), int(rec["row"][s]))
        for j in range(s + 1, e):
            other = (int(rec["shard"][j]), int(rec["row"][j]))
            if other == first or (first, other) in pairs:
                continue
            agree = float(np.mean(sig_of(first[0])[first[1]] == sig_of(other[0])[other[1]]))
            if agree >= threshold:
                pairs.add((first, other))
    arr = np.array([[a[0], a[1], b[0], b[1]] for a, b in sorted(pairs)], dtype=np.uint32).reshape(-1, 4)
    (out / "dedup" / "edges").mkdir(parents=True, exist_ok=True)
    np.save(out / "dedup" / "edges" / f"part-{part:03d}.npy", arr)
    return len(arr)


def deduplicate(out: str | Path, n_tasks: int, threshold: float = 0.8, workers: int = 1) -> dict:
    """Run the three passes over the finished shards of `out`; writes and returns `dedup/drop.json`."""
    from data_pipeline.writer import is_finished, shard_name

    out = Path(out)
    shards = [i for i in range(n_tasks) if is_finished(out, i)]
    if (out / "dedup").exists():
        import shutil

        shutil.rmtree(out / "dedup")
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        counts = list(pool.map(signatures_pass, [out] * len(shards), shards))
        n_pairs = sum(pool.map(edges_pass, [out] * PARTITIONS, range(PARTITIONS), [threshold] * PARTITIONS))
    parent: dict[tuple[int, int], tuple[int, int]] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for f in sorted((out / "dedup" / "edges").glob("*.npy")):
        for s1, r1, s2, r2 in np.load(f):
            a, b = find((int(s1), int(r1))), find((int(s2), int(r2)))
            if a != b:
                parent[max(a, b)] = min(a, b)
    keys = {}

    def key_of(node):
        shard, row = node
        if shard not in keys:
            keys[shard] = np.load(out / "dedup" / "sig" / f"{shard_name(shard)}.npz", allow_pickle=True)[
                "keys"
            ]
        return str(keys[shard][row])

    drop = sorted(key_of(n) for n in parent if find(n) != n)
    result = {
        "threshold": threshold,
        "samples": int(sum(counts)),
        "pairs": int(n_pairs),
        "count": len(drop),
        "keys": drop,
    }
    tmp = out / "dedup" / "drop.json.tmp"
    tmp.write_text(json.dumps(result, indent=0))
    os.replace(tmp, out / "dedup" / "drop.json")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m data_pipeline.dedup", description="MinHash dedup of built shards."
    )
    ap.add_argument("output", help="a build's output folder (with plan.json)")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    out = Path(args.output)
    plan = json.loads((out / "plan.json").read_text())
    r = deduplicate(out, plan["tasks"], args.threshold, args.workers)
    from data_pipeline.manifest import write_manifest

    write_manifest(out, plan["source"], plan["tasks"])
    print(
        f"{r['samples']} samples, {r['pairs']} near-duplicate pairs, {r['count']} dropped → {out / 'dedup' / 'drop.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
