"""The build CLI and the `pdf` source on PDFs the tests write: schema, fidelity, resumability, executors,
bad input, filters, dedup and inspect."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymupdf
import pytest
import webdataset as wds

from data_pipeline.demo_corpus import make_pdf
from data_pipeline.schema import IMAGE_KEYS

BUILD = [sys.executable, "-m", "data_pipeline.build"]


def build(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*BUILD, *args], capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"build failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


def summary(r: subprocess.CompletedProcess) -> dict:
    text = r.stdout
    return json.loads(text[text.index("{") : text.rindex("}") + 1])


def read_shards(out: Path) -> dict[str, dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    samples = {}
    for shard in manifest["shardlist"]:
        for s in wds.WebDataset(str(out / shard["url"]), shardshuffle=False, empty_check=False):
            samples[s["__key__"]] = s
    return samples


@pytest.fixture(scope="module")
def pdf_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pdfs")
    for i in range(3):
        make_pdf(d / "sub" / f"doc.{i}.pdf", seed=i)  # a dot in the name: keys must not keep it
    return d


@pytest.fixture(scope="module")
def built(pdf_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out")
    r = build(
        "source=pdf",
        f"input={pdf_dir}",
        f"output={out}",
        "workers=2",
        "docs_per_shard=2",
        "filters.languages=all",
    )
    return out, summary(r)


def test_pdf_build_follows_the_schema(built):
    out, s = built
    assert (
        s["pages"] == 12 and s["samples"] == 9 and s["skips"] == {"no_text_layer": 3} and s["error_rate"] == 0
    )
    samples = read_shards(out)
    assert len(samples) == 9
    for key, sample in samples.items():
        assert "." not in key and not key.startswith("/") and key.startswith("pdf/sub/doc_")
        layout, meta = json.loads(sample["layout.json"]), json.loads(sample["meta.json"])
        assert {"source", "doc_id", "page", "origin", "builder_version", "lang"} <= set(meta)
        assert max(layout["width"], layout["height"]) <= 2048
        for line in layout["lines"]:
            x0, y0, x1, y1 = line["bbox"]
            assert 0 <= x0 < x1 <= layout["width"] and 0 <= y0 < y1 <= layout["height"]
            assert y1 - y0 >= 15  # the box covers the glyphs: 10-18 pt text at 200 dpi is 28-60 px tall
        # The lines carry exactly PyMuPDF's own text of the page, in its order.
        page = pymupdf.open(meta["origin"])[meta["page"]]
        assert " ".join(" ".join(ln["text"] for ln in layout["lines"]).split()) == " ".join(
            page.get_text().split()
        )
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["__kind__"] == "wids-shard-index-v1"
        and sum(x["nsamples"] for x in manifest["shardlist"]) == 9
    )
    for shard in manifest["shardlist"]:
        stats = json.loads((out / shard["url"]).with_suffix(".json").read_text())
        assert stats["samples"] == shard["nsamples"] and stats["bytes"] > 0


def test_rotated_page_is_upright_and_unicode_survives(built):
    out, _ = built
    samples = read_shards(out)
    rotated = next(json.loads(s["layout.json"]) for k, s in samples.items() if k.endswith("00001"))
    assert rotated["width"] > rotated["height"]  # landscape, as displayed
    assert all(
        ln["bbox"][2] - ln["bbox"][0] > 3 * (ln["bbox"][3] - ln["bbox"][1]) for ln in rotated["lines"]
    )  # horizontal lines
    unicode_page = next(json.loads(s["layout.json"]) for k, s in samples.items() if k.endswith("00002"))
    texts = [ln["text"] for ln in unicode_page["lines"]]
    assert "Café, naïve, résumé, Zürich" in texts and "Русский текст" in texts and "中文文本和日本語" in texts


def test_rerun_of_a_finished_build_does_no_work(built, pdf_dir):
    out, _ = built
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    s = summary(
        build(
            "source=pdf",
            f"input={pdf_dir}",
            f"output={out}",
            "workers=2",
            "docs_per_shard=2",
            "filters.languages=all",
        )
    )
    assert s["tasks_skipped"] == s["tasks_done"] == 2
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == before


def test_ocr_fallback_reads_pages_without_text(pdf_dir, tmp_path):
    one = tmp_path / "in"
    one.mkdir()
    (one / "a.pdf").write_bytes((pdf_dir / "sub" / "doc.0.pdf").read_bytes())
    s = summary(
        build(
            "source=pdf",
            f"input={one}",
            f"output={tmp_path / 'out'}",
            "workers=1",
            "source.ocr_fallback=true",
            "filters.languages=all",
        )
    )
    assert s["samples"] == 4 and "no_text_layer" not in s["skips"]
    ocr = json.loads(read_shards(tmp_path / "out")["pdf/a/00003"]["meta.json"])
    assert ocr["ocr"] == "tesseract"


def _bad_inputs(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    make_pdf(d / "good.pdf", seed=5)
    (d / "corrupt.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(2000))
    (d / "empty.pdf").write_bytes(b"")
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "secret text of an encrypted file")
    doc.save(d / "encrypted.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="o", user_pw="u")
    doc = pymupdf.open()
    for _ in range(5):
        doc.new_page().insert_text((72, 72), "one of many pages of text")
    doc.save(d / "long.pdf")
    doc = pymupdf.open()
    doc.new_page(width=14400, height=14400).insert_text(
        (72, 72), "a poster far too large to render", fontsize=40
    )
    doc.new_page().insert_text((72, 72), "a normal page after the poster page")
    doc.save(d / "poster.pdf")


def test_bad_documents_are_counted_and_the_rest_completes(tmp_path):
    _bad_inputs(tmp_path / "in")
    r = build(
        "source=pdf",
        f"input={tmp_path / 'in'}",
        f"output={tmp_path / 'out'}",
        "workers=2",
        "docs_per_shard=2",
        "source.max_pages_per_doc=4",
        "filters.languages=all",
        check=False,
    )
    s = summary(r)
    assert r.returncode == 1 and "exceeds max_error_rate" in r.stderr  # errors are far above 1 in 250 here
    assert s["errors"] == {"corrupt_pdf": 1, "empty_file": 1, "encrypted": 1}
    assert (
        s["skips"]["too_many_pages"] == 5
        and s["skips"]["pixel_cap"] == 1
        and s["skips"]["no_text_layer"] == 1
    )
    assert (
        s["samples"] == 3 + 1 and not s["tasks_failed"]
    )  # good.pdf's three text pages + the poster's normal page
    assert any("corrupt.pdf" in e for e in s["error_examples"])


def test_time_limit_is_counted_not_fatal(pdf_dir, tmp_path):
    r = build(
        "source=pdf",
        f"input={pdf_dir}",
        f"output={tmp_path / 'out'}",
        "workers=1",
        "source.doc_timeout=0.01",
        check=False,
    )
    s = summary(r)
    assert s["errors"].get("doc_timeout") == 3 and not s["tasks_failed"]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["finished"] == 1


def test_bad_config_fails_before_any_work(pdf_dir, tmp_path):
    """Types and choices are refused by Hydra against configs/schema.py (exit 1, its message names the key);
    what needs the values together or the machine, by the build (exit 2)."""
    for args, code, message in [
        (["source=pdf", "input=/nonexistent/*.pdf"], 2, "no files found"),
        (["source=pdf", f"input={pdf_dir}", "image.format=bmp"], 1, "full_key: image.format"),
        (["source=pdf", f"input={pdf_dir}", "executor=spark"], 1, "expected one of [local, ray]"),
        (
            ["source=pdf", f"input={pdf_dir}", "docs_per_shard=0"],
            2,
            "docs_per_shard=0: expected a whole number >= 1",
        ),
        (["source=pdf", f"input={pdf_dir}", "task_index=3", "task_count=2"], 2, "task_index"),
        (["source=pdf", f"input={pdf_dir}", "filters.lang_hold_mb=-1"], 2, "lang_hold_mb"),
        (["source=pdf", f"input={pdf_dir}", "filters.min_chars=ten"], 1, "full_key: filters.min_chars"),
        (["source=pdf", f"input={pdf_dir}", "sandbox=chroot"], 1, "full_key: sandbox"),
        (["source=pdf", f"input={pdf_dir}", "worker_memory_mb=lots"], 2, "worker_memory_mb"),
        (["source=web", f"input={pdf_dir}", "browser.network=lan"], 1, "full_key: browser.network"),
        (["source=web", f"input={pdf_dir}", "browser.allow_addresses=[intranet]"], 2, "allow_addresses"),
    ]:
        out = tmp_path / "out"
        r = build(*args, f"output={out}", check=False)
        assert r.returncode == code and message in r.stderr, (args, r.stderr)
        assert not list(out.glob("shard-*"))


def test_sigkill_then_rerun_gives_the_uninterrupted_samples(tmp_path):
    src = tmp_path / "in"
    for i in range(10):
        make_pdf(src / f"d{i:02d}.pdf", seed=10 + i)
    args = [
        "source=pdf",
        f"input={src}",
        "workers=1",
        "docs_per_shard=1",
        "filters.languages=all",
        "dedup=false",
    ]
    reference = tmp_path / "ref"
    build(*args, f"output={reference}")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*BUILD, *args, f"output={out}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while len(list(out.glob("shard-*.json"))) < 4 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.glob("shard-*.json")))
    assert 4 <= done_before < 10
    s = summary(build(*args, f"output={out}"))
    assert s["tasks_skipped"] >= done_before
    assert (
        not list(out.glob(".*.tmp"))
        and len(list(out.glob("*.tar"))) == len(list(out.glob("shard-*.json"))) == 10
    )
    got, want = read_shards(out), read_shards(reference)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key]["layout.json"] == want[key]["layout.json"]
        assert pixels(got[key]["png"]) == pixels(want[key]["png"]), png_difference(
            key, got[key]["png"], want[key]["png"]
        )


def pixels(data: bytes) -> bytes:
    """An encoded image as the tests compare builds: its mode, size and pixels. The PNG writer's deflate (ISA-L)
    can encode the same rows two ways (seen in a Slurm build against a local one: one bit of one page's deflate
    stream differed, the inflated rows identical), so two builds of a page agree in pixels, not always in bytes."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return f"{im.mode} {im.size}\n".encode() + im.tobytes()


def shard_members(shard: Path) -> dict[str, bytes]:
    """A shard's members by name, images as `pixels`, everything else as its bytes."""
    import tarfile

    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    return {k: pixels(v) if k.rsplit(".", 1)[-1] in IMAGE_KEYS else v for k, v in members.items()}


def png_difference(key: str, a: bytes, b: bytes) -> str:
    """For a failure message: where two encoded images of one page differ (sizes, the box of differing pixels and
    the largest difference), or that only their bytes do."""
    import io

    import numpy as np
    from PIL import Image

    try:
        x, y = (np.asarray(Image.open(io.BytesIO(d))) for d in (a, b))
    except OSError as e:
        return f"{key}: not both images ({e}); {len(a)} and {len(b)} bytes"
    if x.shape != y.shape:
        return f"{key}: shapes {x.shape} and {y.shape}"
    diff = np.abs(x.astype(int) - y.astype(int))
    rows, cols = np.nonzero(diff.reshape(diff.shape[0], diff.shape[1], -1).max(axis=2))
    if not len(rows):
        return f"{key}: the same pixels, different bytes ({len(a)} and {len(b)})"
    return (f"{key}: {len(rows)} pixels differ, box x {cols.min()}-{cols.max()} y {rows.min()}-{rows.max()} "
            f"of {x.shape}, largest difference {diff.max()}")  # fmt: skip


def test_ray_executor_writes_the_same_samples_as_local(pdf_dir, built, tmp_path):
    local, _ = built
    out = tmp_path / "ray"
    build(
        "source=pdf",
        f"input={pdf_dir}",
        f"output={out}",
        "workers=2",
        "docs_per_shard=2",
        "filters.languages=all",
        "executor=ray",
    )
    got, want = read_shards(out), read_shards(local)
    assert sorted(got) == sorted(want)
    assert all(got[k]["layout.json"] == want[k]["layout.json"] for k in want)


def test_language_filter_and_dedup(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    doc = pymupdf.open()
    doc.new_page().insert_text(
        (72, 72), "Ceci est une page écrite en français, avec des phrases complètes et longues.", fontsize=9
    )
    doc.save(src / "fr.pdf")
    make_pdf(src / "a.pdf", seed=1)
    (src / "copy.pdf").write_bytes((src / "a.pdf").read_bytes())  # the same document under another name
    out = tmp_path / "out"
    s = summary(build("source=pdf", f"input={src}", f"output={out}", "workers=1", "filters.languages=[en]"))
    assert s["skips"]["language"] >= 1
    drop = json.loads((out / "dedup" / "drop.json").read_text())
    copies = sorted(k for k in read_shards(out) if k.startswith("pdf/copy/"))
    assert copies and drop["keys"] == copies  # every page of the copy goes; a/ sorts first and stays
    assert json.loads((out / "manifest.json").read_text())["dropped"] == len(copies)


def _text_pdf(path: Path, pages: list[str]) -> None:
    doc = pymupdf.open()
    for text in pages:
        doc.new_page().insert_textbox(pymupdf.Rect(54, 54, 558, 780), text, fontsize=8)
    doc.save(path)


def test_language_is_the_documents_not_its_first_long_page(tmp_path):
    from tests.test_shard_parts import CONTENTS, ENGLISH, FRENCH

    src = tmp_path / "in"
    src.mkdir()
    # An English manual opening with a table of contents (which alone reads English below 0.5) and holding a
    # French page; a French manual with a short English page.
    _text_pdf(src / "manual.pdf", [CONTENTS, ENGLISH, FRENCH, ENGLISH])
    _text_pdf(src / "roman.pdf", [FRENCH * 4, "Run the command below to install it.", FRENCH * 4])
    args = ["source=pdf", f"input={src}", "workers=1", "dedup=false", "filters.languages=[en]"]
    s = summary(build(*args, f"output={tmp_path / 'doc'}"))
    assert s["samples"] == 4 and s["skips"] == {"language": 3}
    samples = read_shards(tmp_path / "doc")
    assert sorted(samples) == [f"pdf/manual/{i:05d}" for i in range(4)]
    assert all(json.loads(x["meta.json"])["lang"] == "en" for x in samples.values())
    # Page by page, the contents and the French page go, and the French manual's English page stays.
    build(*args, f"output={tmp_path / 'page'}", "filters.lang_scope=page")
    assert sorted(read_shards(tmp_path / "page")) == [
        "pdf/manual/00001",
        "pdf/manual/00003",
        "pdf/roman/00001",
    ]
    # Past the hold limit a document is decided on the pages so far: here its contents page alone.
    s = summary(build(*args, f"output={tmp_path / 'hold'}", "filters.lang_hold_mb=0"))
    assert s["samples"] == 0 and s["skips"] == {"language": 7}


def test_inspect_draws_samples_and_reports_a_corrupt_shard(built, tmp_path):
    out, _ = built
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipeline.inspect",
            str(out / "shard-00000.tar"),
            "--out",
            str(tmp_path / "png"),
            "--n",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and len(list((tmp_path / "png").glob("*.png"))) == 2
    bad = tmp_path / "bad.tar"
    bad.write_bytes((out / "shard-00000.tar").read_bytes()[:5000] + b"\x00garbage" * 100)
    r = subprocess.run(
        [sys.executable, "-m", "data_pipeline.inspect", str(bad), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "bad.tar: corrupt shard" in r.stderr


def test_slurm_array_script_builds_the_same_shards(pdf_dir, built, tmp_path):
    """launch/slurm_build.sh as two array tasks and a finalizing job (run directly, as sbatch would)."""
    local, _ = built
    out = tmp_path / "slurm"
    env = {
        **os.environ,
        "SOURCE": "pdf",
        "INPUT": str(pdf_dir),
        "OUTPUT": str(out),
        "ARRAY": "2",
        "WORKERS": "1",
        "PY": sys.executable,
    }
    extra = ["docs_per_shard=2", "filters.languages=all"]
    for i in range(2):
        r = subprocess.run(
            ["bash", "launch/slurm_build.sh", *extra],
            env={**env, "SLURM_ARRAY_TASK_ID": str(i)},
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert not (out / "manifest.json").exists()  # array tasks leave the manifest to the final job
    r = subprocess.run(
        ["bash", "launch/slurm_build.sh", *extra],
        env={**env, "FINALIZE": "1"},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    got, want = read_shards(out), read_shards(local)
    assert sorted(got) == sorted(want) and all(got[k]["layout.json"] == want[k]["layout.json"] for k in want)


def test_the_language_witness_finds_a_page_of_another_language_the_vote_kept(tmp_path):
    """A document of three English pages and one German page is kept whole by the document's vote; the witness
    of `benchmarks/language_filter.py` (py3langid, another model family than the filter's fastText) reads the
    kept samples again and names the German page, and only it."""
    import pymupdf

    from benchmarks.language_filter import kept_in_other_languages

    english = (
        "The harbour opens at dawn and the boats leave before the market. Fishermen bring their nets back "
        "by noon, and the town buys what they caught while the gulls wait on the roofs."
    )
    german = (
        "Der Hafen öffnet bei Sonnenaufgang und die Boote fahren vor dem Markt hinaus. Die Fischer bringen "
        "ihre Netze zu Mittag zurück, und die Stadt kauft, was sie gefangen haben."
    )
    src = tmp_path / "in"
    src.mkdir()
    doc = pymupdf.open()
    for text in (english, english.upper(), english, german):
        page = doc.new_page()
        page.insert_textbox(pymupdf.Rect(72, 72, 520, 700), text, fontsize=12)
    doc.save(src / "harbour.pdf")
    out = tmp_path / "out"
    s = summary(build("source=pdf", f"input={src}", f"output={out}", "filters.languages=[en]", "dedup=false"))
    assert s["samples"] == 4, s
    assert kept_in_other_languages(out) == ["pdf/harbour/00003"]
