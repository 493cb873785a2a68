"""The training loader on real shards: determinism, exact resume, disjoint ranks, the source mixture, bad
samples, and refusing a changed layout."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from data_pipeline.manifest import read_manifest
from model.processor import ImageProcessor
from model.task_format import TaskFormat
from train.loader import BatchStream, LoaderState, make_loader
from train.samples import SourceSpec


@pytest.fixture(scope="module")
def shards(synthetic_shards) -> dict[str, Path]:
    return synthetic_shards


def _stream(
    shards,
    tokenizer,
    rank=0,
    world=1,
    workers=0,
    resume=None,
    weights=(0.75, 0.25),
    micro=2,
    slots=None,
    global_batch=None,
    window=1,
):
    fmt = TaskFormat(tokenizer, num_image_tokens=8, max_length=256)
    sources = [
        SourceSpec("a", shards["a"], weights[0], "ocr"),
        SourceSpec("b", shards["b"], weights[1], "ocr"),
    ]
    return BatchStream(
        sources,
        fmt,
        ImageProcessor(max_patches=64),
        micro,
        seed=7,
        rank=rank,
        world=world,
        workers=workers,
        resume=resume,
        slots=slots,
        global_batch=global_batch,
        window=window,
    )


def _take(dataset, n):
    return list(itertools.islice(iter(make_loader(dataset)), n))


def test_batches_are_deterministic_and_well_formed(shards, tokenizer):
    first = _take(_stream(shards, tokenizer), 4)
    again = _take(_stream(shards, tokenizer), 4)
    assert [b["keys"] for b in first] == [b["keys"] for b in again]
    b = first[0]
    assert b["flattened_patches"].shape == (2, 64, 770) and b["input_ids"].shape == b["labels"].shape
    assert (b["labels"][:, :12] == -100).all() and b["tasks"] == ["ocr", "ocr"]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_exact_stream(shards, tokenizer, workers):
    """Checkpointed after 3 steps, in the middle of the slots' look-ahead windows of 4: the resumed stream is
    the same, with this or another number of workers."""
    kw = {"global_batch": 4, "window": 4}
    full = _take(_stream(shards, tokenizer, workers=workers, **kw), 10)  # 5 steps of 2 micro batches
    state = LoaderState(world=1, workers=workers, slots=4)
    for b in full[:6]:
        state.update(b)
    saved = json.loads(json.dumps(state.to_dict()))  # as a checkpoint stores it
    resume = LoaderState.resume(saved, 1, workers, 4)
    resumed = _take(_stream(shards, tokenizer, workers=workers, resume=resume, **kw), 4)
    assert [b["keys"] for b in resumed] == [b["keys"] for b in full[6:10]]
    other = _take(_stream(shards, tokenizer, workers=2 - workers, resume=resume, **kw), 4)
    assert [b["keys"] for b in other] == [b["keys"] for b in full[6:10]]


def test_slot_windows_give_steps_of_similar_lengths(tokenizer, tmp_path):
    """Pages of 1 to 40 words a line; 16 slots, one sample each a step, windows of 8: a step's target lengths
    spread less than 0.65 as much as without windows (label bytes only estimate lengths), the same samples are read over the 8 steps of a window,
    and the steps are not ordered by length."""
    import random

    from data_pipeline.synthetic import WORDS
    from tests.test_build_pdf import build

    rng = random.Random(5)
    for d in range(8):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.choice((1, 2, 40)))) for _ in range(32)]
        (tmp_path / "txt").mkdir(exist_ok=True)
        (tmp_path / "txt" / f"{d}.txt").write_text("\n".join(lines))
    build(
        "source=synthetic",
        f"input={tmp_path / 'txt'}",
        f"output={tmp_path / 'varied'}",
        "workers=1",
        "docs_per_shard=1",
        "filters.languages=all",
        "source.snippets_per_page=4",
        "dedup=false",
    )
    varied = {"a": tmp_path / "varied", "b": tmp_path / "varied"}

    def steps(window):
        batches = _take(_stream(varied, tokenizer, micro=16, global_batch=16, slots=16, window=window), 8)
        lengths = [[int((b["labels"][i] != -100).sum()) for i in range(len(b["keys"]))] for b in batches]
        return lengths, sorted(k for b in batches for k in b["keys"])

    plain, plain_keys = steps(1)
    windowed, windowed_keys = steps(8)
    spread = [max(s) - min(s) for s in windowed]
    assert sum(spread) < 0.65 * sum(max(s) - min(s) for s in plain), (spread, plain)  # 142 vs 239
    assert windowed_keys == plain_keys
    means = [sum(s) / len(s) for s in windowed]
    assert means != sorted(means) and means != sorted(means, reverse=True)


def test_global_batches_do_not_depend_on_the_number_of_ranks(shards, tokenizer):
    """With a fixed slot count, 1 rank and 2 ranks see the same set of samples in each global batch, and a
    2-rank checkpoint resumes on 1 rank."""
    one = _take(_stream(shards, tokenizer, slots=4, micro=2, global_batch=4), 6)  # 2 micro-batches a step
    two = [
        _take(_stream(shards, tokenizer, rank=r, world=2, slots=4, micro=2, global_batch=4), 3)
        for r in range(2)
    ]
    for step in range(3):
        want = set(one[2 * step]["keys"] + one[2 * step + 1]["keys"])
        assert set(two[0][step]["keys"] + two[1][step]["keys"]) == want
    saved = []
    for r in range(2):
        st = LoaderState(world=2, workers=0, slots=4)
        for b in two[r][:2]:
            st.update(b)
        saved.append(json.loads(json.dumps(st.to_dict())))
    resumed = _take(
        _stream(
            shards, tokenizer, slots=4, micro=2, global_batch=4, resume=LoaderState.resume(saved, 1, 0, 4)
        ),
        2,
    )
    assert {k for b in resumed for k in b["keys"]} == set(one[4]["keys"] + one[5]["keys"])


def test_ranks_read_disjoint_samples(shards, tokenizer):
    keys = [
        {k for b in _take(_stream(shards, tokenizer, rank=r, world=2), 4) for k in b["keys"]}
        for r in range(2)
    ]
    assert keys[0] and keys[1] and not keys[0] & keys[1]


def test_mixture_follows_the_weights(shards, tokenizer):
    batches = _take(_stream(shards, tokenizer, micro=8), 50)
    share = sum(s == "a" for b in batches for s in b["sources"]) / 400
    assert abs(share - 0.75) < 0.05


def test_changed_slot_count_is_refused(shards, tokenizer):
    state = LoaderState(world=2, workers=1, slots=2).to_dict()
    with pytest.raises(ValueError, match="2 data slots"):
        LoaderState.resume(state, world=4, workers=1, slots=4)
    with pytest.raises(ValueError, match="must divide"):
        _stream(shards, tokenizer, world=2, slots=3)
    with pytest.raises(ValueError, match="3 ranks but 2 data slots"):
        _stream(shards, tokenizer, world=3, slots=2, global_batch=6)


def test_missing_shard_and_bad_images_are_reported(shards, tokenizer, tmp_path, capsys):
    import io
    import shutil
    import tarfile

    root = tmp_path / "copy"
    shutil.copytree(shards["a"], root)
    (root / "shard-00003.tar").unlink()  # found missing when read: named, counted, passed over
    ds = _stream({"a": root, "b": shards["b"]}, tokenizer, weights=(1.0, 0.0), slots=1)
    (state,) = _take(ds, 12)[-1]["loader_state"]["states"].values()  # the 20 samples left, and 4 again
    assert state["counts"].get("unreadable_shard") == 1
    assert "shard-00003.tar" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no manifest"):
        read_manifest(str(tmp_path / "nowhere"))
    shutil.rmtree(root)
    shutil.copytree(shards["a"], root)
    # An undecodable image inside a shard: the sample is skipped and counted, the stream goes on.
    src = root / "shard-00000.tar"
    with tarfile.open(src) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]
    with tarfile.open(src, "w") as tar:
        for m, data in members:
            data = b"not a png" if m.name.endswith(".png") else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    ds = _stream({"a": root, "b": shards["b"]}, tokenizer, weights=(1.0, 0.0), slots=1)
    batches = _take(ds, 14)  # more than the 24 samples of one epoch
    (state,) = batches[-1]["loader_state"]["states"].values()
    counts = state["counts"]
    assert counts.get("bad_image", 0) >= 1


def test_mixed_stage_batches_hold_both_tasks_in_ratio(shards, tokenizer, tmp_path):
    """A layout source and a markdown source at 0.6 / 0.4: over 2,000 samples the task shares are within 5%."""
    from data_pipeline.demo_corpus import make_readme
    from tests.test_build_pdf import build

    for i in range(2):
        make_readme(tmp_path / "readmes" / f"p{i}" / "README.md", seed=i)
    build(
        "source=readme",
        f"input={tmp_path / 'readmes'}",
        f"output={tmp_path / 'md'}",
        "workers=1",
        "filters.languages=all",
        "dedup=false",
    )
    fmt = TaskFormat(tokenizer, num_image_tokens=8, max_length=512)
    sources = [SourceSpec("a", shards["a"], 0.6, "ocr"), SourceSpec("readme", tmp_path / "md", 0.4, "md")]
    ds = BatchStream(
        sources, fmt, ImageProcessor(max_patches=16), 50, seed=3, rank=0, world=1, workers=0, slots=1
    )
    tasks = [t for b in _take(ds, 40) for t in b["tasks"]]
    assert len(tasks) == 2000
    assert abs(tasks.count("md") / 2000 - 0.4) < 0.05 and abs(tasks.count("ocr") / 2000 - 0.6) < 0.05
