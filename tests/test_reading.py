"""Reading: the snippet texts and samples of the warm-up, and the chain test (a model trained from scratch reads
held-out random letters, and does not when its images and texts are mispaired)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from data_pipeline.snippet_text import TextSpec, held_out, make_texts, text_files, word_list
from data_pipeline.sources.synthetic import fonts_of
from data_pipeline.synthetic import font_family, installed_fonts, render_snippet
from tests.test_build_pdf import build, read_shards, summary

WORDS = "/usr/share/dict/words"


def test_snippet_texts_follow_their_spec():
    """Letters from the alphabet in the length range; words of the list, train and held-out splits disjoint and
    together the whole list; mixes carry digits and punctuation; the same seed gives the same texts."""
    letters = make_texts(TextSpec("letters", (2, 4), alphabet="xyz"), 300, seed=1)
    assert all(2 <= len(t) <= 4 and set(t) <= set("xyz") for t in letters)
    assert {len(t) for t in letters} == {2, 3, 4}
    assert letters == make_texts(TextSpec("letters", (2, 4), alphabet="xyz"), 300, seed=1)
    assert letters != make_texts(TextSpec("letters", (2, 4), alphabet="xyz"), 300, seed=2)
    # Weighted lengths: no 3s with weight 0, about twice the 4s of the 2s with weights 1, 0, 2.
    weighted = make_texts(TextSpec("letters", (2, 4), alphabet="xyz", length_weights=(1, 0, 2)), 600, seed=1)
    counts = Counter(len(t) for t in weighted)
    assert set(counts) == {2, 4} and 1.6 < counts[4] / counts[2] < 2.5

    train, held = word_list(WORDS, 0.1, "train"), word_list(WORDS, 0.1, "held_out")
    everything = word_list(WORDS, 0.1, "all")
    assert not set(train) & set(held) and len(train) + len(held) == len(everything) > 50000
    assert 0.08 < len(held) / len(everything) < 0.12
    assert all(held_out(w, 0.1) for w in held[:100]) and not any(held_out(w, 0.1) for w in train[:100])
    spoken = make_texts(TextSpec("words", (1, 3), split="held_out"), 200, seed=3)
    assert all(1 <= len(t.split()) <= 3 and set(t.split()) <= set(held) for t in spoken)

    mixed = make_texts(TextSpec("mixed", (2, 5)), 200, seed=4)
    assert any(re.search(r"\d", t) for t in mixed) and any(re.search(r"[.,:;!?()$#%]", t) for t in mixed)

    # Runs of consecutive words of text files, the held-out files apart from the training ones.
    files = TextSpec("text").files
    train_docs, held_docs = text_files(files, 0.1, "train"), text_files(files, 0.1, "held_out")
    assert len(train_docs) > 50 and held_docs and not set(train_docs) & set(held_docs)
    runs = make_texts(TextSpec("text", (2, 3), split="held_out"), 100, seed=5)
    held_text = "\n".join(" ".join(d) for d in held_docs)
    assert all(1 <= len(t.split()) <= 3 and t in held_text for t in runs)
    assert any(re.search(r"[A-Z]", t) for t in runs) and any(re.search(r"[(){}:=.,]", t) for t in runs)
    for bad, why in (
        ({"kind": "poems"}, "text.kind=poems"),
        ({"length": (0, 3)}, "needs 1 <= low <= high"),
        ({"length": (1, 3), "length_weights": (1, 2)}, "needs 3 weights >= 0"),
        ({"length": (1, 2), "length_weights": (0, 0)}, "not all 0"),
        ({"kind": "words", "words": "/nonexistent/list"}, "no such file"),
        ({"kind": "text", "files": "/nonexistent/*.txt"}, "no text file"),
    ):
        with pytest.raises(ValueError, match=re.escape(why)):
            TextSpec(**bad)


def test_snippet_text_cli_writes_a_build_input(tmp_path):
    out = tmp_path / "texts" / "w.txt"
    cmd = [sys.executable, "-m", "data_pipeline.snippet_text", "--kind", "words", "--count", "50"]
    r = subprocess.run([*cmd, "--out", str(out), "--seed", "5"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 50 and lines == make_texts(TextSpec("words", (1, 3)), 50, seed=5)
    r = subprocess.run([*cmd, "--out", str(out), "--length", "3", "1"], capture_output=True, text=True)
    assert r.returncode == 2 and "text.length=[3, 1]" in r.stderr


def _snippets(out: Path) -> list[tuple[list[dict], tuple[int, int], dict]]:
    shards = read_shards(out)
    return [
        (
            json.loads(shards[k]["layout.json"])["lines"],
            Image.open(io.BytesIO(shards[k]["png"])).size,
            json.loads(shards[k]["meta.json"]),
        )
        for k in sorted(shards)
    ]


def test_fonts_are_chosen_and_held_out_by_family():
    dejavu = "/usr/share/fonts/truetype/dejavu"
    cfg = {"fonts": dejavu}
    every = fonts_of(cfg)
    names = {Path(f).name for f in every}
    assert {"DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"} <= names
    assert font_family(f"{dejavu}/DejaVuSans-BoldOblique.ttf") == "DejaVu Sans"
    assert font_family(f"{dejavu}/DejaVuSerifCondensed-Italic.ttf") == "DejaVu Serif"
    # By family name (every face of it), by file name, and by a name that starts families' names.
    serif = {Path(f).name for f in fonts_of({**cfg, "font_names": ["DejaVu Serif"]})}
    assert "DejaVuSerif-BoldItalic.ttf" in serif and all(n.startswith("DejaVuSerif") for n in serif), serif
    assert {Path(f).name for f in fonts_of({**cfg, "font_names": ["DejaVuSans.ttf"]})} == {"DejaVuSans.ttf"}
    left = {Path(f).name for f in fonts_of({**cfg, "fonts_excluded": ["DejaVu Sans", "DejaVuSerif.ttf"]})}
    assert left and not any(n.startswith("DejaVuSans") for n in left) and "DejaVuSerif.ttf" not in left, left
    # The split by family: the two shares part the folder, and no family is on both sides.
    train = fonts_of({**cfg, "fonts_split": "train"})
    held = fonts_of({**cfg, "fonts_split": "held_out"})
    assert train and held and sorted(train + held) == sorted(every)
    assert not {font_family(f) for f in train} & {font_family(f) for f in held}


def test_synthetic_snippets_are_crops_or_canvases_of_their_lines(tmp_path):
    """`source.mode=snippet`: each sample is `lines_per_snippet` lines in one crop the size of the text, or on a
    fixed canvas; every box inside the image and the text as given (descenders included: a line taller than the
    canvas's room takes a smaller margin, not a loss); held-out fonts are the ones training never draws; knobs that
    cannot draw are refused before any work."""
    src = tmp_path / "in"
    src.mkdir()
    snippets = [f"line {i} of the warm-up" for i in range(9)]
    (src / "s.txt").write_text("\n".join(snippets))
    opts = ["source=synthetic", f"input={src}", "workers=1", "filters.languages=all", "source.mode=snippet"]
    out = tmp_path / "crops"
    s = summary(build(*opts, f"output={out}", "source.lines_per_snippet=2", "source.font_px=[30,30]"))
    assert s["samples"] == 5  # 4 of two lines, 1 of the last one
    drawn, crops = [], _snippets(out)
    assert sorted(len(lines) for lines, _, _ in crops) == [1, 2, 2, 2, 2]  # lines_per_snippet=2, 9 lines
    for lines, (w, h), _ in crops:
        # A crop: the image is the lines' extent plus a margin of at most padding's 0.5 x 30 px on each side.
        x0s, y0s, x1s, y1s = zip(*(ln["bbox"] for ln in lines), strict=True)
        assert w <= max(x1s) - min(x0s) + 2 * 15 + 1 and h <= max(y1s) - min(y0s) + 2 * 15 + 1, (lines, w, h)
        for ln in lines:
            x0, y0, x1, y1 = ln["bbox"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, ln
        drawn += [ln["text"] for ln in lines]
    assert sorted(drawn) == sorted(snippets)

    (src / "s.txt").write_text("\n".join(["gjq", "pyg", "abc", "Wjy"] * 5))
    out = tmp_path / "canvas"
    dejavu = "/usr/share/fonts/truetype/dejavu"
    # Snippets are short and repeat: the page filters' minimum and near-duplicate removal are off for them.
    canvas = [*opts, "source.canvas=[96,32]", "source.font_px=[22,26]", f"source.fonts={dejavu}"]
    canvas += ["filters.min_chars=1", "dedup=false"]
    s = summary(build(*canvas, f"output={out}", "source.fonts_split=held_out"))
    assert s["samples"] == 20
    held_fonts = set()
    for lines, size, meta in _snippets(out):
        assert size == (96, 32) and len(lines) == 1 and lines[0]["text"] in {"gjq", "pyg", "abc", "Wjy"}
        x0, y0, x1, y1 = lines[0]["bbox"]
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 32, lines
        held_fonts.update(meta["fonts"])
    out = tmp_path / "canvas-train"
    build(*canvas, f"output={out}", "source.fonts_split=train")
    train_fonts = {f for _, _, meta in _snippets(out) for f in meta["fonts"]}
    assert held_fonts and train_fonts and not held_fonts & train_fonts
    # The split is by family: every face of a held-out family (DejaVu Sans: its bold, oblique, condensed) is
    # held out, and none of them is trained on.
    families = {font_family(f"{dejavu}/{f}") for f in held_fonts | train_fonts}
    assert all(held_out(font_family(f"{dejavu}/{f}"), 0.2) for f in held_fonts), held_fonts
    assert not any(held_out(font_family(f"{dejavu}/{f}"), 0.2) for f in train_fonts), train_fonts
    assert len(families) >= 2
    out = tmp_path / "one-font"
    build(*canvas, f"output={out}", "source.font_names=[DejaVuSerif.ttf]")
    assert {f for _, _, meta in _snippets(out) for f in meta["fonts"]} == {"DejaVuSerif.ttf"}
    # Long lines padded to a shape: no crop wider than 3:1, the box where the text was drawn (same text, width).
    (src / "s.txt").write_text("\n".join(["a long line of words", "short", "another long line here"] * 4))
    crops = [*opts, "source.font_px=[22,22]", f"source.fonts={dejavu}", "source.font_names=[DejaVuSans.ttf]"]
    crops += ["filters.min_chars=1", "dedup=false"]
    plain, padded = tmp_path / "plain", tmp_path / "padded"
    build(*crops, f"output={plain}")
    build(*crops, f"output={padded}", "source.max_aspect=3")
    wide = 0
    for (lines, (w, h), _), (lines2, (w2, h2), _) in zip(_snippets(plain), _snippets(padded), strict=True):
        assert lines[0]["text"] == lines2[0]["text"] and w == w2 and w2 <= 3 * h2 + 3, (lines, w2, h2)
        (x0, y0, x1, y1), (a0, b0, a1, b1) = lines[0]["bbox"], lines2[0]["bbox"]
        assert (x0, x1, y1 - y0) == (a0, a1, b1 - b0) and 0 <= b0 < b1 <= h2
        wide += w > 3 * h
        assert h2 == h if w <= 3 * h else h2 > h
    assert wide >= 8

    for bad, why in (
        ("source.mode=poster", "source.mode=poster: choose from page, snippet"),
        ("source.lines_per_snippet=0", "needs at least 1"),
        ("source.font_px=[40,20]", "needs 4 <= low <= high"),
        ("source.canvas=[96,4]", "source.canvas=[96, 4]: needs a width and height of at least 8 px"),
        ("source.max_aspect=0.5", "source.max_aspect=0.5: needs at least 1"),
        ("source.fonts_split=some", "source.fonts_split=some: choose from"),
        (
            "source.font_names=[Nope.ttf]",
            "source.font_names=['Nope.ttf'], source.fonts_excluded=[], source.fonts_split=all: no font of",
        ),
    ):
        r = build(*opts, f"output={tmp_path / 'bad'}", bad, check=False)
        assert r.returncode == 2 and why in r.stderr + r.stdout, (bad, r.stderr[-500:])


# The chain test's run: 1-2 random letters of a 6-letter alphabet in one font, crops rescaled to 8 patches, 400
# steps of 32; held out: 200 strings of 2 letters (benchmarks/results/learning.md: 52%, 51.5% and 64% exact at
# step 400 for seeds 0-2, the control 1.5-3.5%; a 10-letter alphabet's onset varied too much for a test).
CHAIN = [
    "text.length=[1,2]",
    "text.alphabet=abcdef",
    "model.max_patches=8",
    "snippets.canvas=null",
    "snippets.font_px=[24,24]",
    "snippets.fonts=/usr/share/fonts/truetype/dejavu",
    "snippets.font_names=[DejaVuSans.ttf]",
    "optim.lr=3e-3",
    "optim.warmup_steps=50",
    "steps=400",
    "eval.every=400",
    "held_out.count=200",
    "held_out.text.length=[2,2]",  # 1 in 36 pairs of 2-letter strings are equal: the control's chance
]
READS = 0.25  # held-out exact match a reading model passes
# What a model that does not read stays under: chance is 2.8%, 4 standard deviations (of 200 strings) below.
CHANCE = 0.1


ROOT = Path(__file__).resolve().parents[1]
# The planted fault, the kind the chain test exists to catch: the loader's batches pair each target with the
# next sample's image.
PLANTED = """
import json, sys
from benchmarks import learning
from train.samples import collate

def mispaired(items, pad_id):
    batch = collate(items, pad_id)
    batch["flattened_patches"] = batch["flattened_patches"].roll(1, dims=0)
    return batch

learning.collate = mispaired
print(json.dumps(learning.run(learning.compose(sys.argv[1:]), threads=1, quiet=True)["final"]))
"""


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, dict]:
    """The chain test's run and the same run with the planted fault, side by side with a thread each: their
    final held-out figures."""
    tmp = tmp_path_factory.mktemp("chain")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {
        "reads": ["-m", "benchmarks.learning", "--threads", "1", *CHAIN, f"out={tmp / 'reads'}"],
        "mispaired": ["-c", PLANTED, *CHAIN, f"out={tmp / 'mispaired'}"],
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in runs.items()
    }
    outputs = {name: proc.communicate(timeout=900) for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, (name, outputs[name][1][-3000:])
    return {
        "reads": json.loads((tmp / "reads" / "summary.json").read_text())["final"],
        "mispaired": json.loads(outputs["mispaired"][0].splitlines()[-1]),
    }


@pytest.mark.slow
def test_a_snippet_label_box_holds_its_line_ink():
    """Each drawn line's box is where its ink is: every pixel unlike the background lies in a box, and each box
    holds ink, across faces, sizes, lines per snippet, canvases and padded crops (a box misplaced by a pixel row
    fails)."""
    import numpy as np

    fonts = installed_fonts()[:40]
    for seed in range(60):
        texts = ["Jumpy fog", "quiz 42 lab", "gypsy"][: 1 + seed % 3]
        canvas = [None, (192, 64)][seed % 2]
        aspect = [None, 2.0][seed % 4 == 1]  # a padded crop: the text at a random height
        image, lines, _ = render_snippet(
            texts, seed, fonts=fonts, font_px=(10, 40), canvas=canvas, max_aspect=aspect
        )
        arr = np.asarray(image).astype(int)
        ink = np.abs(arr - arr[0, 0]).sum(axis=2) > 0  # the corner is background (a margin, or the canvas)
        inside = np.zeros_like(ink)
        for ln in lines:
            x0, y0, x1, y1 = ln["bbox"]
            assert ink[y0:y1, x0:x1].any(), (seed, ln)
            inside[y0:y1, x0:x1] = True
        assert lines and not (ink & ~inside).any(), (seed, lines, np.argwhere(ink & ~inside)[:5])


def test_a_model_trained_from_scratch_reads_held_out_letters(chain):
    """The whole chain (snippet samples, shard encoding, the loader's encoder and collate, the task format, the
    model, greedy generation and its parsing) learns to read: held-out random strings are read exactly well above
    chance, and the same model given other snippets' images (the control) stays at chance."""
    final = chain["reads"]
    assert final["em"] >= READS and final["control_em"] <= CHANCE, final
    assert final["val_loss"] < 0.5 * final["val_loss_shuffled"], final


@pytest.mark.slow
def test_the_chain_test_fails_when_images_and_texts_are_mispaired(chain):
    """A planted fault (PLANTED: each target paired with the next sample's image in the loader's batches): the
    same run then reads nothing: exact match stays at chance, under the threshold."""
    final = chain["mispaired"]
    assert final["em"] < READS and final["em"] <= CHANCE, final


def test_a_recipe_runs_its_stages_each_from_the_weights_of_the_last(tmp_path):
    """`benchmarks.learning --recipe`: every stage's config is checked before any trains; each stage starts from
    the weights the one before wrote (its step-0 validation loss is the last one's final, on the same held-out
    set); `--stages` runs one stage from its predecessor's weights, and refuses when they are missing."""
    from benchmarks.learning import main

    recipe = tmp_path / "two.yaml"
    recipe.write_text(
        "stages:\n"
        "  - {name: first, overrides: [steps=3, optim.warmup_steps=1]}\n"
        "  - {name: second, overrides: [steps=2, optim.warmup_steps=1, 'text.length=[2,2]']}\n"
    )
    common = ["--recipe", str(recipe), "--threads", "1", f"out={tmp_path / 'out'}", "held_out.count=4",
              "eval.every=100", "batch=4", "model.max_patches=8", "held_out.text.length=[2,2]"]  # fmt: skip
    assert main([*common, "text.kind=bogus"]) == 2 and not (tmp_path / "out").exists()
    assert main(["--stages", "second", *common]) == 2  # first has not run
    assert main(common) == 0
    first, second = (
        [json.loads(x) for x in (tmp_path / "out" / s / "curve.jsonl").read_text().splitlines()]
        for s in ("first", "second")
    )
    assert [r["step"] for r in first] == [0, 3] and [r["step"] for r in second] == [0, 2]
    assert second[0]["val_loss"] == pytest.approx(first[-1]["val_loss"], rel=1e-5)
    assert second[0]["val_loss"] != pytest.approx(first[0]["val_loss"], rel=1e-3)
    summary = json.loads((tmp_path / "out" / "second" / "summary.json").read_text())
    assert sum(g["n"] for g in summary["breakdown"]["words"].values()) == 4  # the last reading, by words
    assert "| characters | 1-11 | 4 |" in (tmp_path / "out" / "second" / "table.md").read_text()
    assert main(["--stages", "second", *common]) == 0
    plot = tmp_path / "flops.png"
    runs = [str(tmp_path / "out" / s) for s in ("first", "second")]
    assert main(["--compare", *runs, "--plot", str(plot)]) == 0 and plot.stat().st_size > 1000
    assert main(["--compare", str(tmp_path / "nothing")]) == 2


def test_every_shipped_recipe_composes_stage_by_stage():
    """Each recipe in configs/tools/recipes names its stages, and every stage's overrides compose into a checked
    config (a bad key, a text kind or a process count that does not divide the batch is refused here, not after
    an hour of the stages before it)."""
    from benchmarks import learning
    from configs.compose import RECIPE_DIR, recipe_stages

    recipes = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
    assert {"demo", "reading", "reading-30", "reading-fast"} <= set(recipes)
    for name in recipes:
        stages = recipe_stages(name)
        assert stages and len({s["name"] for s in stages}) == len(stages), name
        for stage in stages:
            cfg = learning.compose(stage["overrides"])
            assert int(cfg.steps) > 0 and int(cfg.batch) % int(cfg.procs) == 0, (name, stage)


def test_real_page_lines_are_cropped_and_read_as_held_out_snippets(tmp_path):
    """`held_out.crops`: lines of labelled pages of the chosen word counts become one-line held-out snippets, their
    boxes moved into the crop; lines with characters outside the vocabulary are left out; `steps=0` reads them
    with `init=`'s weights and no training (word F1 beside the character error, for the model and the control)."""
    from PIL import ImageDraw, ImageFont

    from benchmarks.learning import main
    from train.pages import EvalPage, line_crops

    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 20)
    texts = ["one", "two words", "three short words", "far too many words here", "caf\u00e9 bar"]
    image = Image.new("RGB", (400, 40 * len(texts) + 20), "white")
    draw, lines = ImageDraw.Draw(image), []
    for i, text in enumerate(texts):
        draw.text((10, 10 + 40 * i), text, font=font, fill="black")
        lines.append({"text": text, "bbox": list(draw.textbbox((10, 10 + 40 * i), text, font=font))})
    page = EvalPage("doc/0", "pdf", image, lines)

    crops = line_crops([page], (1, 3), 0.5, charset=set("abcdefghijklmnopqrstuvwxyz "))
    assert [c.lines[0]["text"] for c in crops] == ["one", "two words", "three short words"]
    for crop, line in zip(crops, lines, strict=False):
        x0, y0, x1, _ = crop.lines[0]["bbox"]
        pad = 0.5 * (line["bbox"][3] - line["bbox"][1])
        assert (x0, y0) == pytest.approx((pad, pad), abs=1) and crop.image.size[0] == pytest.approx(
            x1 + pad, abs=2
        )
        assert crop.image.getbbox() is not None  # the text's ink is in the crop (not blank)
    assert len(line_crops([page], (1, 5), 0.5)) == 5 and len(line_crops([page], (1, 5), 0.5, count=2)) == 2

    folder = tmp_path / "pages"
    folder.mkdir()
    image.save(folder / "page.png")
    (folder / "page.layout.json").write_text(json.dumps({"lines": lines}))
    common = ["--threads", "1", "held_out.count=10", "model.max_patches=8", f"held_out.crops={folder}"]
    assert main([*common, "steps=1", "batch=2", f"out={tmp_path / 'a'}"]) == 0
    init = tmp_path / "a" / "model.pt"
    assert main([*common, "steps=0", f"init={init}", f"out={tmp_path / 'b'}"]) == 0
    curve = [json.loads(x) for x in (tmp_path / "b" / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [0] and {"word_f1", "control_word_f1"} <= set(curve[0])
    read = [json.loads(x)["truth"] for x in (tmp_path / "b" / "predictions.jsonl").read_text().splitlines()]
    assert read == ["one", "two words", "three short words"]  # café is not in the character vocabulary
    assert main([*common, "steps=0", f"held_out.crops={tmp_path / 'none'}", f"out={tmp_path / 'c'}"]) == 2


def test_pages_of_several_lines_are_drawn_and_scored_with_their_boxes():
    """`snippets.lines_per_snippet=3`: each held-out sample is three lines, one above the other, with their
    boxes; reading scores the lines joined (exact match, CER, word F1) and each true line's box against the box
    read for it (IoU, as pages are scored): a reading with the true lines scores 1, the same text with its boxes
    moved down by a line scores less, and text alone without the order of the lines is no exact match."""
    from benchmarks import learning, learning_eval

    cfg = learning.compose(
        ["snippets.lines_per_snippet=3", "held_out.count=4", "text.kind=words", "model.max_patches=96"]
    )
    pages = learning.held_out_pages(cfg)
    assert len(pages) == 4 and all(len(p.lines) == 3 for p in pages)
    for p in pages:
        tops = [ln["bbox"][1] for ln in p.lines]
        bottoms = [ln["bbox"][3] for ln in p.lines]
        assert tops == sorted(tops) and all(b <= t for b, t in zip(bottoms, tops[1:], strict=False)), p.lines

    class Reads:  # an evaluator that "reads" what `lines` makes of each page
        def __init__(self, lines):
            self.items = [{"page": p, "flattened_patches": None} for p in pages]
            self.lines = lines

        def predict(self, items, max_new_tokens):
            return [{"lines": self.lines(it["page"]), "text": ""} for it in items]

    truth = learning_eval.read_scores(Reads(lambda p: p.lines), 64, shuffled=False)
    assert (truth["em"], truth["cer"], truth["word_f1"], truth["iou"]) == (1.0, 0.0, 1.0, 1.0)

    def moved(p):
        h = p.lines[1]["bbox"][1] - p.lines[0]["bbox"][1]
        return [{**ln, "bbox": [b + (h if i % 2 else 0) for i, b in enumerate(ln["bbox"])]} for ln in p.lines]

    shifted = learning_eval.read_scores(Reads(moved), 64, shuffled=False)
    assert shifted["em"] == 1.0 and shifted["iou"] < 0.6, shifted["iou"]
    swapped = learning_eval.read_scores(Reads(lambda p: p.lines[::-1]), 64, shuffled=False)
    assert swapped["em"] == 0.0 and swapped["word_f1"] == 1.0 and swapped["iou"] == 1.0


def test_a_run_trains_and_reads_pages_of_several_lines(tmp_path, monkeypatch):
    """Training batches hold `batch` samples of `lines_per_snippet` lines each (every sample's target has them
    all), the curve carries the box IoU, and the stream is the same drawn in a worker process."""
    from benchmarks import learning

    seen = []
    drawn = learning.DrawnSample
    monkeypatch.setattr(learning, "DrawnSample", lambda s: seen.append(len(s.lines)) or drawn(s))
    pages = ["snippets.lines_per_snippet=2", "held_out.count=2", "model.max_patches=16", "max_length=96"]
    common = [*pages, "steps=2", "batch=3", "eval.every=100"]
    cfg = learning.compose([*common, "data_workers=0", f"out={tmp_path / 'here'}"])
    final = learning.run(cfg, threads=1, quiet=True)["final"]
    assert seen == [2] * 6 and 0.0 <= final["iou"] <= 1.0, (seen, final)
    # A worker process drawing the batches ahead gives the same stream: the same weights after two steps.
    cfg = learning.compose([*common, "data_workers=1", f"out={tmp_path / 'worker'}"])
    learning.run(cfg, threads=1, quiet=True)
    here, worker = (torch.load(tmp_path / d / "model.pt") for d in ("here", "worker"))
    assert all(torch.equal(here[k], worker[k]) for k in here)


def test_training_batches_are_those_of_the_samples_stored_and_read_back(tmp_path, monkeypatch):
    """The training stream encodes each drawn sample as it is (`DrawnSample`), not through PNG and JSON: its
    batches equal, tensor for tensor, those of the same samples written as shard members and decoded as the
    loader decodes them (pages of two lines in the 22 DejaVu faces, so sizes, colours and boxes vary)."""
    from benchmarks import learning
    from data_pipeline.schema import decode_sample, encode_sample
    from model.processor import ImageProcessor
    from model.task_format import TaskFormat

    cfg = learning.compose(["snippets.lines_per_snippet=2", "snippets.font_names=null", "text.kind=words"])
    tok = learning.make_tokenizer(cfg, tmp_path)
    encoder = learning.Encoder(TaskFormat(tok, 32, 128), ImageProcessor(48))
    source = learning.source_config(cfg)
    fonts = learning.synthetic.fonts_of(source)

    def batches(n=3):
        stream = iter(learning.Batches(learning.text_spec(cfg), source, fonts, encoder, tok.pad_id, 5, 8))
        return [next(stream) for _ in range(n)]

    direct = batches()
    monkeypatch.setattr(learning, "DrawnSample", lambda s: decode_sample(encode_sample(s)))
    stored = batches()
    assert len(fonts) == 22 and all(b["input_ids"].shape[0] == 8 for b in direct)
    for a, b in zip(direct, stored, strict=True):
        assert a.keys() == b.keys() and all(
            torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a
        ), [k for k in a if torch.is_tensor(a[k]) and not torch.equal(a[k], b[k])]


def test_two_training_processes_train_as_one(tmp_path):
    """`procs=2`: two processes over gloo, each drawing half of every step's samples, end with the weights one
    process ends with (the loss is the mean over the whole step's target tokens either way), and the lead
    writes the curve; a process count that does not divide the batch is refused before any work."""
    from benchmarks import learning

    common = [
        "text.kind=words",
        "steps=3",
        "batch=4",
        "eval.every=2",
        "held_out.count=2",
        "model.max_patches=16",
    ]
    one = learning.run(
        learning.compose([*common, "procs=1", f"out={tmp_path / 'one'}"]), threads=1, quiet=True
    )
    two = learning.run(
        learning.compose([*common, "procs=2", f"out={tmp_path / 'two'}"]), threads=2, quiet=True
    )
    assert two["steps"] == 3 and [r["step"] for r in json_lines(tmp_path / "two" / "curve.jsonl")] == [
        0,
        2,
        3,
    ]
    assert two["final"]["val_loss"] == pytest.approx(one["final"]["val_loss"], abs=1e-4)
    a, b = (torch.load(tmp_path / d / "model.pt") for d in ("one", "two"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-6
    # Half the samples (one process's share alone, say) moves the weights far more than that.
    other = learning.run(learning.compose([*common, "batch=2", f"out={tmp_path / 's'}"]), None, 1, True)
    c = torch.load(tmp_path / "s" / "model.pt")
    assert other["steps"] == 3 and max((a[k] - c[k]).abs().max().item() for k in a) > 2e-5
    with pytest.raises(ValueError, match="procs=3"):
        learning.compose([*common, "procs=3"])


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_crops_are_cut_from_shards_while_their_pages_stream(tmp_path):
    """`train.pages.iter_pages` over shards yields the pages one at a time (a generator: `line_crops` keeps only
    the crops), the same pages `load_pages` reads; a missing shard is refused when asked, before any page."""
    import tarfile
    import types

    from data_pipeline.schema import Sample, encode_sample
    from data_pipeline.synthetic import render_snippets_page
    from train.pages import iter_pages, line_crops, load_pages

    shard = tmp_path / "shard-00000.tar"
    with tarfile.open(shard, "w") as tar:
        for page in range(3):
            image, lines, _ = render_snippets_page(
                ["two words", "one", "three more words", "and four words here"], page, (400, 300)
            )
            sample = Sample("synthetic", "doc", page, image, "doc", lines=lines)
            for name, data in encode_sample(sample).items():
                if name == "__key__":
                    continue
                data = data if isinstance(data, bytes) else data.encode()
                info = tarfile.TarInfo(f"{sample.key}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    streamed = iter_pages(str(shard))
    assert isinstance(streamed, types.GeneratorType)
    loaded = load_pages(str(shard), 10)
    assert len(loaded) == 3 and [p.key for p in iter_pages(str(shard))] == [p.key for p in loaded]
    crops = line_crops(iter_pages(str(shard)), (1, 3), 0.25)
    assert [c.lines for c in crops] == [c.lines for c in line_crops(loaded, (1, 3), 0.25)] and len(crops) >= 6
    with pytest.raises(FileNotFoundError, match="nope.tar"):
        iter_pages(str(tmp_path / "nope.tar"))


def test_held_out_lengths_are_drawn_uniformly_unless_given():
    """Training's `text.length_weights` shape the training texts only: the held-out set keeps uniform lengths (so
    that runs with other weights are scored on the same lines) unless `held_out.text.length_weights` is given."""
    from benchmarks import learning

    common = ["text.kind=words", "text.length=[1,3]", "text.length_weights=[0,0,1]"]
    cfg = learning.compose(common)
    train, held = learning.text_spec(cfg), learning.text_spec(cfg, cfg.held_out.text)
    assert {len(t.split()) for t in make_texts(train, 50, seed=0)} == {3}
    assert {len(t.split()) for t in make_texts(held, 60, seed=99)} == {1, 2, 3}
    assert make_texts(held, 60, seed=99) == make_texts(
        learning.text_spec(learning.compose([*common[:2]]), cfg.held_out.text), 60, seed=99
    )
    own = learning.compose([*common, "held_out.text.length_weights=[1,0,0]"])
    assert {len(t.split()) for t in make_texts(learning.text_spec(own, own.held_out.text), 30, seed=99)} == {
        1
    }
    with pytest.raises(ValueError, match=re.escape("text.length_weights=[1.0]")):
        learning.compose([*common[:2], "text.length_weights=[1]"])


def test_misses_are_broken_down_by_words_characters_and_capitals(tmp_path, capsys):
    """`learning_eval.breakdown` groups a reading's snippets by their truth's words, characters and capitals, with
    each group's exact match and character error; `python -m benchmarks.learning_eval` prints it for finished
    runs' `predictions.jsonl`, and names a file it cannot read."""
    from benchmarks.learning_eval import breakdown, main

    examples = [
        {"truth": "cat", "read": "cat"},
        {"truth": "Ziegler", "read": "Siegler"},
        {"truth": "two words", "read": "two words"},
        {"truth": "three longer words here", "read": "three longer words"},
        {"truth": "a b c", "read": "a b c"},
    ]
    parts = breakdown(examples)
    assert list(parts["words"]) == ["1", "2", "3", "4"]
    assert parts["words"]["1"] == {"n": 2, "em": 0.5, "cer": 1 / 10}
    assert parts["words"]["4"] == {"n": 1, "em": 0.0, "cer": 5 / 23}
    assert list(parts["characters"]) == ["1-11", "18-23"] and parts["characters"]["1-11"]["n"] == 4
    assert parts["capitals"]["with"] == {"n": 1, "em": 0.0, "cer": 1 / 7}
    assert parts["capitals"]["without"]["em"] == 0.75
    run = tmp_path / "predictions.jsonl"
    run.write_text("".join(json.dumps(e) + "\n" for e in examples))
    assert main([str(run)]) == 0
    assert "| capitals | with | 1 | 0.0% | 0.143 |" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
