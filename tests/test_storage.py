"""Shards behind URLs, read by the one reader (data_pipeline/storage.py): a real HTTP server and a real
S3-protocol server (moto's) on localhost, and pipe: commands; faults counted and passed over; training,
evaluation and resume from each."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline import storage
from data_pipeline.manifest import _MANIFESTS, parse_manifest, read_manifest
from data_pipeline.storage import UnreadableShard, iter_samples
from tests.servers import http_server, s3_server, upload
from tests.test_pretrain import ENV, _metrics, _train


def _digest(root: str) -> list[tuple[str, str]]:
    """(key, hash of its members) of every sample of a build, in manifest order."""
    _MANIFESTS.pop(root, None)
    manifest = read_manifest(root)
    out = []
    for i in range(len(manifest)):
        for sample in iter_samples(manifest.url(i), expected=int(manifest.nsamples[i])):
            h = hashlib.sha256()
            for ext in sorted(k for k in sample if k != "__key__"):
                h.update(ext.encode() + sample[ext])
            out.append((sample["__key__"], h.hexdigest()))
    return out


def test_every_kind_of_url_reads_the_same_samples(synthetic_shards):
    root = synthetic_shards["a"]
    want = _digest(str(root))
    assert len(want) == read_manifest(str(root)).samples == 24
    assert _digest(root.as_uri()) == want
    assert _digest(f"pipe:cat {root}/{{}}") == want
    with http_server(root) as (url, served):
        assert _digest(url) == want
        assert served["manifest.json"] == 1 and all(served[f"shard-{i:05d}.tar"] == 1 for i in range(6))
    with s3_server():
        upload(root, "s3://literate/builds/a")
        assert _digest("s3://literate/builds/a") == want
    with pytest.raises(ValueError, match="needs \\{\\}"):
        storage.join("pipe:cat /x", "manifest.json")


def test_http_faults_are_retried_then_counted_and_passed_over(
    synthetic_shards, tokenizer, monkeypatch, capsys
):
    """A shard that answers 404 and one whose connection drops every time are named and counted as
    `unreadable_shard`; one whose connection drops once is read again from where it stopped, and loses
    nothing. The stream goes on with the rest."""
    from tests.test_loader import _stream, _take

    monkeypatch.setattr(storage, "RETRY_DELAY", 0.01)
    root = synthetic_shards["a"]
    faults = {"shard-00001.tar": "404", "shard-00002.tar": "drop", "shard-00003.tar": "drop-once"}
    with http_server(root, faults) as (url, served):
        with pytest.raises(UnreadableShard, match="shard-00002.tar"):
            list(iter_samples(f"{url}/shard-00002.tar"))
        assert served["shard-00002.tar"] == storage.RETRIES + 1
        assert len(list(iter_samples(f"{url}/shard-00003.tar"))) == 4 and served["shard-00003.tar"] == 2
        served.clear()
        _MANIFESTS.pop(url, None)
        batches = _take(
            _stream({"a": url, "b": root}, tokenizer, weights=(1.0, 0.0), slots=1), 8
        )  # 16 samples
    keys = [k for b in batches for k in b["keys"]]
    (state,) = batches[-1]["loader_state"]["states"].values()
    assert state["counts"]["unreadable_shard"] == 2
    err = capsys.readouterr().err
    assert "shard-00001.tar: unreadable shard" in err and "shard-00002.tar: unreadable shard" in err
    local = {s[0] for s in _digest(str(root))}
    lost = {k for k in local if k not in keys}
    assert len(keys) == len(set(keys)) == 16 and len(lost) == 8  # 4 shards of 4 read; 2 shards lost
    assert served["shard-00003.tar"] == 2 and served["shard-00002.tar"] == storage.RETRIES + 1


@pytest.fixture(scope="module")
def local_run(tokenizer, synthetic_shards, tmp_path_factory):
    """4 steps on the local shards: the reference the URL runs are compared with."""
    tmp = tmp_path_factory.mktemp("local_run")
    sources = tmp / "sources.json"
    sources.write_text(json.dumps(_sources(str(synthetic_shards["a"]), str(synthetic_shards["b"]))))
    run = tmp / "run"
    _train(tokenizer, sources, run, 4)
    return {m["step"]: m["loss"] for m in _metrics(run)}


def _sources(a: str, b: str) -> list[dict]:
    return [
        {"name": "a", "root": a, "weight": 1.0, "task": "ocr"},
        {"name": "b", "root": b, "weight": 1.0, "task": "ocr"},
    ]


def test_train_evaluate_and_resume_from_s3_and_a_pipe(tokenizer, synthetic_shards, local_run, tmp_path):
    """Source a in an S3 bucket, source b through `pipe:cat`, held-out data in the bucket: 2 steps, then
    resumed to 4, repeat the local run's losses; the evaluation CLI reads the bucket too."""
    sources = tmp_path / "sources.json"
    val = tmp_path / "val.json"
    pipe_b = f"pipe:cat {synthetic_shards['b']}/{{}}"
    sources.write_text(json.dumps(_sources("s3://literate/a", pipe_b)))
    val.write_text(json.dumps([{"name": "heldout", "root": "s3://literate/b", "task": "ocr"}]))
    run = tmp_path / "run"
    with s3_server() as env:
        upload(synthetic_shards["a"], "s3://literate/a")
        upload(synthetic_shards["b"], "s3://literate/b")
        for steps in (2, 4):
            extra = [
                f"data.val_sources_file={val}",
                "eval.every=2",
                "eval.predictions=1",
                "eval.max_new_tokens=4",
            ]
            r = _train(tokenizer, sources, run, steps, *extra, env={**ENV, **env})
        assert "at step 2" in r.stdout
        got = {m["step"]: m["loss"] for m in _metrics(run)}
        assert max(abs(got[s] - local_run[s]) for s in range(1, 5)) < 1e-6, (got, local_run)
        evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
        assert sum("val/loss/heldout/ocr" in e for e in evals) >= 3  # steps 0, 2, 4: read from the bucket
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "train.evaluate",
                f"checkpoint={run}",
                "data=s3://literate/b",
                f"out={tmp_path / 'eval'}",
                "n=2",
                "max_new_tokens=4",
            ],
            env={**ENV, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics, metrics


def test_slots_read_a_small_source_once_in_all(synthetic_shards):
    """6 shards of 4 samples dealt to 16 slots: sample ranges, every sample read by exactly one slot."""
    from train.loader import shard_permutation, slot_segments

    manifest = read_manifest(str(synthetic_shards["a"]))
    perm = shard_permutation(7, "a", 0, len(manifest))
    seen = [
        (shard, i)
        for slot in range(16)
        for shard, first, end in slot_segments(manifest, perm, slot, 16)
        for i in range(first, end)
    ]
    assert sorted(seen) == sorted(itertools.product(range(6), range(4)))
    assert sorted(shard for shard, _, _ in slot_segments(manifest, perm, 0, 3)) == sorted(perm[0::3].tolist())


def test_a_manifest_of_millions_of_shards_is_held_in_arrays():
    names = b",".join(b'{"url": "shard-%07d.tar", "nsamples": 140}' % i for i in range(1_000_000))
    data = b'{"__kind__": "wids-shard-index-v1", "source": "pdf", "shardlist": [' + names + b"]}"
    m = parse_manifest("s3://bucket/pdf", data, ["pdf/x/00000"])
    assert len(m) == 1_000_000 and m.samples == 140_000_000 and m.source == "pdf"
    assert m.url(123456) == "s3://bucket/pdf/shard-0123456.tar"
    assert m.names.nbytes + m.nsamples.nbytes < 30 * 2**20
    assert m.dropped("pdf/x/00000") and not m.dropped("pdf/x/00001")


def test_reader_names_a_missing_local_shard(tmp_path):
    with pytest.raises(UnreadableShard, match="nothing.tar"):
        list(iter_samples(tmp_path / "nothing.tar"))
    assert not Path(tmp_path / "nothing.tar").exists()


def test_a_build_from_and_to_s3_killed_half_way_resumes_to_the_local_shards(tmp_path):
    """input=s3://... and output=s3://... on moto's server: SIGKILL after 3 finished shards, run again: the
    bucket holds the shards of a local build of the same PDFs (every member equal, but the origin, which
    names the document's URL)."""
    import os
    import signal
    import time

    from data_pipeline.demo_corpus import make_pdf
    from tests.test_build_pdf import BUILD, build, pixels, png_difference, read_shards, summary

    src = tmp_path / "pdfs"
    src.mkdir()
    for i in range(8):
        make_pdf(src / f"d{i:02d}.pdf", seed=30 + i)
    args = ["source=pdf", "workers=1", "docs_per_shard=1", "filters.languages=all", "dedup=false"]
    build(*args, f"input={src}", f"output={tmp_path / 'local'}")
    with s3_server() as env:
        upload(src, "s3://literate/in")
        fs, _ = storage.filesystem("s3://literate/out")
        remote = [*args, "input=s3://literate/in", "output=s3://literate/out"]
        proc = subprocess.Popen([*BUILD, *remote], env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        deadline = time.time() + 300
        while len(fs.glob("literate/out/shard-*.json")) < 3 and time.time() < deadline:
            fs.invalidate_cache()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        fs.invalidate_cache()
        done_before = len(fs.glob("literate/out/shard-*.json"))
        assert 3 <= done_before < 8
        r = subprocess.run(
            [*BUILD, *remote], env={**os.environ, **env}, capture_output=True, text=True, timeout=600
        )
        assert r.returncode == 0, r.stderr[-3000:]
        assert summary(r)["tasks_skipped"] >= done_before
        fs.invalidate_cache()
        fs.get("literate/out/", str(tmp_path / "fetched"), recursive=True)
        listed = tmp_path / "objects.txt"  # a list file of the objects builds the same samples
        listed.write_text("\n".join(f"s3://literate/in/d{i:02d}.pdf" for i in range(8)))
        r = subprocess.run([*BUILD, *args, f"input={listed}", "output=s3://literate/out2"], env={**os.environ, **env},
                           capture_output=True, text=True, timeout=600)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        fs.get("literate/out2/", str(tmp_path / "fetched2"), recursive=True)
    got, want = read_shards(tmp_path / "fetched"), read_shards(tmp_path / "local")
    assert sorted(got) == sorted(want) and len(want) >= 8
    for key, sample in want.items():
        for ext, data in sample.items():
            if ext.startswith("__"):  # webdataset's own: where it read the sample
                continue
            if ext == "meta.json":
                mine, theirs = json.loads(got[key][ext]), json.loads(data)
                assert mine.pop("origin").startswith("s3://literate/in/") and theirs.pop("origin")
                assert mine == theirs, key
            elif ext == "png":
                assert pixels(got[key][ext]) == pixels(data), png_difference(key, got[key][ext], data)
            else:
                assert got[key][ext] == data, (key, ext)
    assert sorted(read_shards(tmp_path / "fetched2")) == sorted(want)
    manifest = json.loads((tmp_path / "fetched" / "manifest.json").read_text())
    assert manifest["finished"] == 8 and manifest["totals"]["samples"] == len(want)


def test_a_run_over_http_with_a_missing_and_a_cut_shard_finishes(tokenizer, synthetic_shards, tmp_path):
    """Training from an HTTP server whose shard 1 answers 404 and shard 2 drops its connection every time:
    both named and counted in the metrics, the run finishes; the evaluation CLI reads the same server."""
    root = synthetic_shards["a"]
    faults = {"shard-00001.tar": "404", "shard-00002.tar": "drop"}
    run = tmp_path / "run"
    with http_server(root, faults) as (url, served):
        sources = tmp_path / "sources.json"
        sources.write_text(json.dumps([{"name": "a", "root": url, "weight": 1.0, "task": "ocr"}]))
        env = {**ENV, "LITERATE_READ_RETRY_DELAY": "0.05"}
        r = _train(tokenizer, sources, run, 4, "data.slots=1", env=env)  # one slot reads every shard in turn
        assert (
            "shard-00001.tar: unreadable shard" in r.stderr
            and "shard-00002.tar: unreadable shard" in r.stderr
        )
        assert _metrics(run)[-1]["data/unreadable_shard"] >= 2
        r = subprocess.run(
            [sys.executable, "-m", "train.evaluate", f"checkpoint={run}", f"data={url}", f"out={tmp_path / 'eval'}",
             "n=2", "max_new_tokens=4"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        assert served["manifest.json"] >= 2
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())
