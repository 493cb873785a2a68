"""One shard writer: a webdataset tar written under a temporary name, renamed when complete, and its stats
JSON written last. A shard is finished iff its JSON exists; a tar without one is rebuilt."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline import storage

_ZEROS = bytes(tarfile.BLOCKSIZE)
_OWNER = "bigdata"
# The fixed parts of a member's ustar header as `tarfile` writes them (mode 0444, uid/gid 0, mtime 0,
# a regular file, owner "bigdata"): before the size field, after it up to the checksum, and after that.
_MODE_IDS = b"0000444\0" + b"0000000\0" * 2
_MTIME = b"00000000000\0"
_TAIL = (
    b"0"  # regular file
    + bytes(100)  # link name
    + tarfile.POSIX_MAGIC
    + _OWNER.encode().ljust(32, b"\0") * 2
    + bytes(8 + 8 + 155 + 12)  # device numbers, name prefix, padding to 512
)
_FIXED_SUM = sum(_MODE_IDS) + sum(_MTIME) + 8 * ord(" ") + sum(_TAIL)  # the checksum counts itself as spaces


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


@dataclass
class ShardStats:
    shard: str
    docs: int = 0
    pages: int = 0  # pages seen (samples + skips + errors)
    samples: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: Counter = field(default_factory=Counter)  # reason -> pages
    skips: Counter = field(default_factory=Counter)  # reason -> pages
    error_examples: list = field(default_factory=list)  # a few "file: reason: detail" lines

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["errors"], d["skips"] = dict(self.errors), dict(self.skips)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardStats:
        d = dict(d)
        d["errors"], d["skips"] = Counter(d.get("errors", {})), Counter(d.get("skips", {}))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def is_finished(out_dir: str | Path, index: int) -> bool:
    return storage.output_exists(out_dir, f"{shard_name(index)}.json")


def read_stats(out_dir: str | Path, index: int) -> ShardStats:
    return ShardStats.from_dict(json.loads(storage.read_text(out_dir, f"{shard_name(index)}.json")))


def _header(name: str, size: int) -> bytes:
    """The header `tarfile` writes for a member (PAX format: a plain ustar header, plus an extended header
    only for a name that is not ASCII or over 100 characters), built directly for the usual name in a tenth
    of the time of `TarInfo.tobuf` (2 µs vs 23 µs)."""
    if len(name) <= tarfile.LENGTH_NAME and name.isascii() and size < 8**11:
        raw, size_field = name.encode(), b"%011o\0" % size
        checksum = _FIXED_SUM + sum(raw) + sum(size_field)
        return b"".join((raw.ljust(100, b"\0"), _MODE_IDS, size_field, _MTIME, b"%06o\0 " % checksum, _TAIL))
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0
    info.uname = info.gname = _OWNER
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class ShardWriter:
    """`with ShardWriter(out_dir, i) as w: w.write(members)`; on a clean exit the shard is finished. An
    object-store output (`s3://`, `gs://`) is written through a local staging folder: the tar is uploaded,
    then its JSON, last, as locally."""

    def __init__(self, out_dir: str | Path, index: int):
        self.remote = str(out_dir) if storage.is_object_store(out_dir) else None
        self.out_dir = Path(tempfile.mkdtemp(prefix="literate-stage-") if self.remote else out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name = shard_name(index)
        self.tar_path = self.out_dir / f"{self.name}.tar"
        self.json_path = self.out_dir / f"{self.name}.json"
        for stale in self.out_dir.glob(f".{self.name}.tar.*.tmp"):  # left by a killed run of this task
            stale.unlink(missing_ok=True)
        self._tmp = self.out_dir / f".{self.name}.tar.{os.getpid()}.tmp"
        self.stats = ShardStats(shard=f"{self.name}.tar")
        self._t0 = time.perf_counter()
        self._keys: set[str] = set()

    def __enter__(self) -> ShardWriter:
        self._stream = open(self._tmp, "wb")
        return self

    def write(self, members: dict[str, Any]) -> None:
        """One sample: `{"__key__": key, ext: bytes, ...}` → tar members `key.ext`, in sorted order, as
        webdataset writes them. Fixed owner, mode and time, so equal samples make equal bytes."""
        key = members["__key__"]
        if key in self._keys:
            raise ValueError(f"duplicate key {key} in {self.name}")
        self._keys.add(key)
        for ext in sorted(k for k in members if not k.startswith("_")):
            data = members[ext]
            self._stream.write(_header(f"{key}.{ext}", len(data)))  # gathered in the file's buffer
            self._stream.write(data)  # an image goes straight out
            self._stream.write(_ZEROS[: -len(data) % tarfile.BLOCKSIZE])
        self.stats.samples += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        # The end of the archive as tarfile writes it: two zero blocks, then zeros to a whole record.
        end = self._stream.tell() + 2 * tarfile.BLOCKSIZE
        self._stream.write(bytes(2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE)))
        self._stream.close()
        if exc_type is not None:
            self._tmp.unlink(missing_ok=True)
            if self.remote:
                shutil.rmtree(self.out_dir, ignore_errors=True)
            return
        self.stats.bytes = self._tmp.stat().st_size
        self.stats.seconds = round(time.perf_counter() - self._t0, 3)
        os.replace(self._tmp, self.tar_path)
        try:
            if self.remote:
                storage.upload(self.tar_path, self.remote, self.tar_path.name)
            # last: the JSON marks the shard finished
            storage.write_text(
                self.remote or self.out_dir, self.json_path.name, json.dumps(self.stats.to_dict(), indent=1)
            )
        finally:
            if self.remote:
                shutil.rmtree(self.out_dir, ignore_errors=True)
