"""Where shards live, and the one reader of them: local paths, `file:`, `http(s)://`, `s3://`, `gs://` and
`pipe:CMD` URLs, as webdataset users write them.

- local paths and `file:` URLs are opened directly;
- `http(s)://` and `pipe:CMD` through `webdataset.gopen` (curl with its own retries for HTTP; any command
  that writes the file to its standard output for `pipe:`, e.g. `pipe:aws s3 cp s3://bucket/key -`);
- `s3://` and `gs://` through fsspec (`s3fs`, `gcsfs`): credentials and the endpoint come from the usual
  places (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL` for an S3-compatible store, `~/.aws`, the instance's role),
  and the same URLs can be written to, which `pipe:` cannot do with a completion rule.

A root (a build's output folder) is joined with a file's name by `/`; a `pipe:` root has `{}` where the name
goes: `pipe:aws s3 cp s3://bucket/literate/pdf/{} -`.

Shards are read as tar streams (as webdataset's tar iterator reads them) and grouped into samples by key. A remote read
that fails (a dropped connection, a 5xx) is retried with back-off, continuing after the samples already
read; a shard that still fails raises `UnreadableShard` naming it, for the caller to count and pass over.
"""

from __future__ import annotations

import os
import sys
import tarfile
import time
import urllib.parse
from collections.abc import Callable, Iterator

REMOTE = ("http://", "https://", "s3://", "gs://", "pipe:")
# Further attempts of a remote read after its first failure, and the seconds before the first (doubled for
# each next one): LITERATE_READ_RETRIES, LITERATE_READ_RETRY_DELAY in the environment (the loader's worker
# processes inherit it).
RETRIES = int(os.environ.get("LITERATE_READ_RETRIES", "3"))
RETRY_DELAY = float(os.environ.get("LITERATE_READ_RETRY_DELAY", "1.0"))


class UnreadableShard(OSError):
    """A shard that could not be read to its end (after retries, for a remote one)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


def is_remote(url: str | os.PathLike) -> bool:
    return str(url).startswith(REMOTE)


def local_path(url: str | os.PathLike) -> str | None:
    """The file system path of a local path or `file:` URL; None for a remote URL."""
    url = str(url)
    if url.startswith("file:"):
        return urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    return None if is_remote(url) else url


def join(root: str | os.PathLike, name: str) -> str:
    """The URL of `name` (a relative path) inside `root`."""
    root = str(root)
    if root.startswith("pipe:"):
        if "{}" not in root:
            raise ValueError(
                f"{root}: a pipe: root needs {{}} where the file's name goes "
                "(e.g. pipe:aws s3 cp s3://bucket/literate/pdf/{} -)"
            )
        return root.replace("{}", name)
    path = local_path(root)
    if path is not None and not root.startswith("file:"):
        return os.path.join(path, name)
    return root.rstrip("/") + "/" + name


def filesystem(url: str):
    """(fsspec file system, path) of an `s3://` or `gs://` URL. The endpoint in the environment is part of the
    file system's identity (fsspec keeps one instance per set of options, made the first time)."""
    import fsspec

    options = {}
    if url.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        options["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        raise OSError(f"{url}: {e} (pip install s3fs for s3://, gcsfs for gs://)") from e


def open_read(url: str | os.PathLike):
    """A binary file object reading `url`."""
    url = str(url)
    path = local_path(url)
    if path is not None:
        return open(path, "rb")
    if url.startswith(("s3://", "gs://")):
        fs, path = filesystem(url)
        return fs.open(path, "rb")
    import webdataset

    return webdataset.gopen(url, "rb")


def _attempts(url: str, retries: int | None) -> int:
    """How many times a read of `url` is tried: once for a local file, 1 + retries for a remote one."""
    return 1 + (RETRIES if retries is None else retries) if is_remote(url) else 1


def read_bytes(url: str | os.PathLike, retries: int | None = None, delay: float | None = None) -> bytes:
    """The whole content of `url`, remote reads retried with back-off (a missing file is not retried)."""
    url, delay = str(url), RETRY_DELAY if delay is None else delay
    attempts = _attempts(url, retries)
    for attempt in range(attempts):
        try:
            with open_read(url) as f:
                return f.read()
        except OSError as e:
            if attempt + 1 == attempts or isinstance(e, FileNotFoundError):
                raise
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------------
# A build's output: a local folder, or an object-store prefix (s3://, gs://) written through fsspec.


def is_object_store(url: str | os.PathLike) -> bool:
    return str(url).startswith(("s3://", "gs://"))


def output_exists(out: str | os.PathLike, name: str) -> bool:
    url = join(out, name)
    if is_object_store(url):
        fs, path = filesystem(url)
        return fs.isfile(path)
    return os.path.isfile(url)


def read_text(out: str | os.PathLike, name: str) -> str:
    return read_bytes(join(out, name)).decode("utf-8")


def write_text(out: str | os.PathLike, name: str, text: str, sync: bool = False) -> None:
    """`name` inside the output, whole or not at all (a local file is written beside and renamed). `sync`: on
    disk before this returns (the file and the rename), as a checkpoint's commit needs."""
    url = join(out, name)
    if is_object_store(url):
        fs, path = filesystem(url)
        fs.pipe_file(path, text.encode("utf-8"))  # an object appears whole when its upload completes
        return
    tmp = f"{url}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, url)
    if sync:
        folder = os.open(os.path.dirname(url) or ".", os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def upload(local: str | os.PathLike, out: str | os.PathLike, name: str) -> None:
    """Copy a finished local file to `name` inside an object-store output."""
    fs, path = filesystem(join(out, name))
    fs.put_file(str(local), path)


def list_objects(prefix: str, extensions: tuple[str, ...]) -> list[str]:
    """The URLs under an object-store prefix whose names end with one of `extensions`, sorted."""
    fs, path = filesystem(prefix)
    scheme = prefix.split("://", 1)[0]
    found = fs.find(path.rstrip("/"))
    return sorted(f"{scheme}://{p}" for p in found if p.lower().endswith(tuple(extensions)))


def fetch(url: str, folder: str | os.PathLike) -> str:
    """Download an object into `folder` (its own, empty one: a document reads only its own folder); its path."""
    fs, path = filesystem(url)
    local = os.path.join(str(folder), os.path.basename(path))
    fs.get_file(path, local)
    return local


def _split(name: str) -> tuple[str, str]:
    """(key, extension) of a member: the key is the name up to the first dot of its last path part."""
    head, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{head}/{key}" if head else key), ext


def _samples(fileobj, skip: int, wanted: Callable[[str], bool] | None) -> Iterator[dict]:
    """Samples of a tar stream in order, members grouped by key, after the first `skip` (whose members are
    passed over unread)."""
    current = None
    state = {"key": None, "index": -1}

    def select(name: str) -> bool:  # runs for every member before its data is read
        key, ext = _split(name)
        if key != state["key"]:
            state["key"], state["index"] = key, state["index"] + 1
        return state["index"] >= skip and (wanted is None or wanted(ext))

    for name, data in _members(fileobj, select):
        key, ext = _split(name)
        if current is not None and key != current["__key__"]:
            yield current
            current = None
        if current is None:
            current = {"__key__": key}
        current[ext] = data
    if current is not None:
        yield current


def _members(fileobj, select: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(name, data) of a tar stream's regular files that `select(name)` takes, read in order, as webdataset's
    tar iterator reads them (top-level `__name__` members are the tar's metadata, passed over). Its own loop,
    not webdataset's: importing webdataset imports torch, 1.7 s of every build runner's start-up."""
    with tarfile.open(fileobj=fileobj, mode="r|*") as stream:
        for info in stream:
            meta = "/" not in info.name and info.name.startswith("__") and info.name.endswith("__")
            if info.isreg() and not meta and select(info.name):
                yield info.name, stream.extractfile(info).read()
            stream.members = []  # a stream keeps every member's header otherwise


def iter_samples(
    url: str | os.PathLike,
    skip: int = 0,
    wanted: Callable[[str], bool] | None = None,
    expected: int | None = None,
    retries: int | None = None,
    delay: float | None = None,
) -> Iterator[dict]:
    """The samples of the shard at `url` (dicts of extension -> bytes, plus `__key__`) after the first
    `skip`; `wanted(ext)` chooses the members read. A remote read that fails is retried after the samples
    already yielded, `retries` times with back-off; then, or at once for a local file, `UnreadableShard`.
    `expected` (the manifest's count): a shard that ends before it is truncated (a tar stream cut at a
    block of zeros reads as a shorter, valid one), and is unreadable too."""
    url, delay = str(url), RETRY_DELAY if delay is None else delay
    attempts = _attempts(url, retries)
    done = skip
    for attempt in range(attempts):
        try:
            with open_read(url) as f:
                for sample in _samples(f, done, wanted):
                    done += 1
                    yield sample
            if expected is not None and done < expected:
                raise EOFError(f"ended after {done} of its {expected} samples")
            return
        except UnreadableShard:
            raise
        except Exception as e:  # tarfile.ReadError, OSError, EOFError, a pipe's exit status, an HTTP error
            if attempt + 1 == attempts or isinstance(e, FileNotFoundError):
                raise UnreadableShard(url, f"{type(e).__name__}: {e}") from e
            print(
                f"warning: {url}: read failed after {done} samples ({type(e).__name__}: {e}); "
                f"retrying in {delay * 2**attempt:g}s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(delay * 2**attempt)
