"""The training loader on real shards: determinism, exact resume, disjoint ranks, the source mixture, bad
samples, and refusing a changed layout."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from data_pipeline.storage import read_manifest
from model.processor import ImageProcessor
from model.task_format import TaskFormat
from train.loader import BatchStream, LoaderState, SourceSpec, make_loader


@pytest.fixture(scope="module")
def shards(synthetic_shards) -> dict[str, Path]:
    return synthetic_shards


def _stream(
    shards, tokenizer, rank=0, world=1, workers=0, resume=None, weights=(0.75, 0.25), micro=2, slots=None
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
    full = _take(_stream(shards, tokenizer, workers=workers), 9)
    state = LoaderState(world=1, workers=workers, slots=max(workers, 1))
    for b in full[:5]:
        state.update(b)
    saved = json.loads(json.dumps(state.to_dict()))  # as a checkpoint stores it
    resume = LoaderState.resume(saved, 1, workers, max(workers, 1))
    resumed = _take(_stream(shards, tokenizer, workers=workers, resume=resume), 4)
    assert [b["keys"] for b in resumed] == [b["keys"] for b in full[5:9]]


def test_global_batches_do_not_depend_on_the_number_of_ranks(shards, tokenizer):
    """With a fixed slot count, 1 rank and 2 ranks see the same set of samples in each global batch, and a
    2-rank checkpoint resumes on 1 rank."""
    one = _take(_stream(shards, tokenizer, slots=4, micro=2), 6)  # global batch of 4 = 2 micro-batches
    two = [_take(_stream(shards, tokenizer, rank=r, world=2, slots=4, micro=2), 3) for r in range(2)]
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
        _stream(shards, tokenizer, slots=4, micro=2, resume=LoaderState.resume(saved, 1, 0, 4)), 2
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
    with pytest.raises(ValueError, match="multiple of ranks x workers"):
        _stream(shards, tokenizer, world=2, slots=3)


def test_missing_shard_and_bad_images_are_reported(shards, tokenizer, tmp_path, capsys):
    import io
    import shutil
    import tarfile

    root = tmp_path / "copy"
    shutil.copytree(shards["a"], root)
    (root / "shard-00003.tar").unlink()  # found missing when read: named, counted, passed over
    ds = _stream({"a": root, "b": shards["b"]}, tokenizer, weights=(1.0, 0.0))
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
    ds = _stream({"a": root, "b": shards["b"]}, tokenizer, weights=(1.0, 0.0))
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
    ds = BatchStream(sources, fmt, ImageProcessor(max_patches=16), 50, seed=3, rank=0, world=1, workers=0)
    tasks = [t for b in _take(ds, 40) for t in b["tasks"]]
    assert len(tasks) == 2000
    assert abs(tasks.count("md") / 2000 - 0.4) < 0.05 and abs(tasks.count("ocr") / 2000 - 0.6) < 0.05
