"""The paper's metrics against hand-computed values and independent implementations (rapidfuzz, zss), and
`train.evaluate` on a Hugging Face directory and on shards."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
import zss
from PIL import Image, ImageDraw

from train.scoring import (
    Node,
    anls,
    exact_match,
    layout_scores,
    levenshtein,
    markdown_scores,
    markdown_tree,
    ned,
    nted,
    tree_edit_distance,
    word_prf,
)


def _line(text, box=(0, 0, 10, 10)):
    return {"text": text, "bbox": list(box)}


# ----------------------------------------------------------- hand-computed


def test_empty_prediction_and_empty_reference():
    ref = [_line("a b"), _line("c", (0, 20, 10, 30))]
    s = layout_scores([], ref)
    assert (s["precision"], s["recall"], s["f1"], s["iou"], s["ned"]) == (0.0, 0.0, 0.0, 0.0, 0.0)
    s = layout_scores(ref, [])
    assert (s["precision"], s["recall"], s["f1"], s["iou"], s["ned"]) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert layout_scores([], []) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "iou": 1.0, "ned": 1.0}
    assert markdown_scores("", "") == {"ned": 1.0, "nted": 1.0}
    assert markdown_scores("", "# Title")["ned"] == 0.0


def test_duplicated_lines_count_as_a_multiset():
    ref = [_line("the cat sat")]
    pred = [_line("the cat sat"), _line("the cat sat", (0, 20, 10, 30))]
    p, r, f1 = word_prf(pred, ref)
    assert (p, r) == (0.5, 1.0) and f1 == pytest.approx(2 / 3)
    # one reference line, one matched box of IoU 1: the duplicate's box is unmatched
    assert layout_scores(pred, ref)["iou"] == 1.0


def test_reordered_lines_keep_f1_and_iou_but_not_ned():
    ref = [_line("abc", (0, 0, 10, 10)), _line("xyz", (0, 20, 10, 30))]
    pred = list(reversed(ref))
    s = layout_scores(pred, ref)
    assert s["f1"] == 1.0 and s["iou"] == 1.0
    # "xyz\nabc" vs "abc\nxyz": 6 substitutions over 7 characters
    assert s["ned"] == pytest.approx(1 - 6 / 7)


def test_box_iou_of_half_overlapping_boxes():
    ref = [_line("a", (0, 0, 10, 10))]
    pred = [_line("a", (5, 0, 15, 10))]
    assert layout_scores(pred, ref)["iou"] == pytest.approx(50 / 150)


def test_unicode_is_compared_by_code_point():
    assert levenshtein("東京都", "京都") == 1
    assert ned("café", "cafe") == pytest.approx(0.75)
    assert levenshtein("😀🚀", "🚀") == 1
    assert word_prf([_line("Ελληνικά русский")], [_line("Ελληνικά russkiy")])[2] == pytest.approx(0.5)


def test_edit_distance_by_hand():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "") == 3
    assert ned("flaw", "lawn") == pytest.approx(0.5)


def test_nted_of_nested_lists_by_hand():
    # root(ul(li(a), li(b)))  vs  root(ul(li(a, ul(li(b)))))
    flat, nested = "- a\n- b\n", "- a\n  - b\n"
    a, b = markdown_tree(flat), markdown_tree(nested)
    assert a == Node("root", [Node("ul", [Node("li", [Node("a")]), Node("li", [Node("b")])])])
    assert b == Node("root", [Node("ul", [Node("li", [Node("a"), Node("ul", [Node("li", [Node("b")])])])])])
    # ordered edits cannot move a subtree: delete the first `li` (its text moves up), insert a `ul` over the
    # second item, insert an `li` over both: 3 edits, over max(6, 7) nodes
    assert tree_edit_distance(a, b) == 3
    assert nted(flat, nested) == pytest.approx(1 - 3 / 7)


def test_nted_of_tables_by_hand():
    two = "| x | y |\n|---|---|\n| 1 | 2 |\n"
    three = "| x | y |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n"
    # the second body row adds tr + 2 td + 2 text leaves = 5 nodes
    assert tree_edit_distance(markdown_tree(two), markdown_tree(three)) == 5
    size = markdown_tree(three).size()
    assert nted(two, three) == pytest.approx(1 - 5 / size)
    # one changed cell text: one relabel
    assert tree_edit_distance(markdown_tree(two), markdown_tree(two.replace("2", "7"))) == 1
    assert nted(two, two) == 1.0


def test_heading_level_is_one_relabel():
    assert tree_edit_distance(markdown_tree("# Title\n"), markdown_tree("## Title\n")) == 1


# ------------------------------------------------------ independent checks


def test_anls_and_exact_match_on_hand_computed_cases():
    """DocVQA's ANLS: case and spaces normalised; the best of several answers; 1 - NL kept up to NL = 0.5
    inclusive, 0 above."""
    assert anls("Hello", ["hello"]) == 1.0 and anls("  The   TOTAL ", ["the total"]) == 1.0
    assert anls("abcd", ["abce"]) == 0.75  # one edit in four
    assert anls("abcd", ["abxy"]) == 0.5  # NL exactly 0.5 counts
    assert anls("abcde", ["abxyz"]) == 0.0  # NL 0.6
    assert anls("12.5", ["twelve", "12.50"]) == 0.8  # the best answer: one edit in five
    assert anls("$12.50", ["12.50", "$12.50"]) == 1.0 and anls("", [""]) == 1.0 and anls("x", []) == 0.0
    assert exact_match("The  Total", ["the total"]) == 1.0 and exact_match("12.5", ["12.50"]) == 0.0


def _zss(n: Node) -> zss.Node:
    z = zss.Node(n.label)
    for c in n.children:
        z.addkid(_zss(c))
    return z


def test_tree_edit_distance_agrees_with_zss():
    rng = random.Random(1)

    def tree(depth=0):
        n = Node(rng.choice("abcd"))
        for _ in range(rng.randint(0, 3 if depth < 3 else 0)):
            n.children.append(tree(depth + 1))
        return n

    for _ in range(400):
        a, b = tree(), tree()
        assert tree_edit_distance(a, b) == zss.simple_distance(_zss(a), _zss(b))
    md = [
        "# A\n\n- x\n  - y\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
        "## A\n\n1. x\n2. y\n\n```\ncode\n```\n",
        "Text with **bold** and `code`.\n\n> quote\n",
    ]
    for x in md:
        for y in md:
            a, b = markdown_tree(x), markdown_tree(y)
            assert tree_edit_distance(a, b) == zss.simple_distance(_zss(a), _zss(b))


# ------------------------------------------------------------ train.evaluate


@pytest.fixture(scope="module")
def hf_model_dir(tokenizer, tmp_path_factory):
    """A tiny random Kosmos-2.5 saved by `save_pretrained`, with our tokenizer beside it."""
    torch.manual_seed(0)
    cfg = transformers.Kosmos2_5Config(
        text_config=dict(
            vocab_size=tokenizer.vocab_size,
            embed_dim=32,
            layers=2,
            ffn_dim=64,
            attention_heads=4,
            max_position_embeddings=1024,
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=48, head_dim=8, num_hidden_layers=2, num_attention_heads=4
        ),
        latent_query_num=8,
    )
    path = tmp_path_factory.mktemp("hf_eval")
    transformers.Kosmos2_5ForConditionalGeneration(cfg).eval().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "Kosmos2_5ImageProcessor", "max_patches": 64})
    )
    for f in tokenizer.path.glob("tokenizer.*"):
        shutil.copy(f, path / f.name)
    return path


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pages")
    for i in range(3):
        im = Image.new("RGB", (320, 240), "white")
        d = ImageDraw.Draw(im)
        d.text((20, 30), f"hello world {i}", fill="black")
        d.text((20, 80), "second line", fill="black")
        im.save(folder / f"p{i}.png")
        lines = [_line(f"hello world {i}", (18, 28, 120, 42)), _line("second line", (18, 78, 100, 92))]
        (folder / f"p{i}.layout.json").write_text(json.dumps({"lines": lines}))
        (folder / f"p{i}.md").write_text(f"# hello world {i}\n\n- second line\n")
    return folder


def test_evaluate_a_hugging_face_directory_by_path(hf_model_dir, labelled_folder, tmp_path):
    out = tmp_path / "eval"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.evaluate",
            f"checkpoint={hf_model_dir}",
            f"data={labelled_folder}",
            f"out={out}",
            "max_new_tokens=24",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "metrics.json").read_text())
    overall = result["metrics"]["overall"]
    assert set(overall["ocr"]) == {"pages", "precision", "recall", "f1", "iou", "ned"}
    assert set(overall["md"]) == {"pages", "ned", "nted"}
    assert overall["ocr"]["pages"] == 3 and overall["md"]["pages"] == 3
    assert {"ocr", "md", f"{labelled_folder.name}/ocr"} <= set(result["val_loss"])
    assert set(result["val_loss"]) == set(result["val_loss_shuffled_images"])
    assert (
        "Text recognition" in (out / "metrics.md").read_text() and "NTED" in (out / "metrics.md").read_text()
    )
    assert len(list((out / "pages").glob("*.png"))) == 3
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6


def test_evaluate_rejects_what_it_cannot_read(hf_model_dir, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "train.evaluate", f"checkpoint={tmp_path}", "data=x", f"out={tmp_path / 'o'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "not a run directory" in r.stderr
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.evaluate",
            f"checkpoint={hf_model_dir}",
            f"data={tmp_path / 'missing.tar'}",
            f"out={tmp_path / 'o'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "missing.tar" in r.stderr
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.evaluate",
            f"checkpoint={hf_model_dir}",
            "data=x",
            "out=y",
            "samples=3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "Could not override 'samples'" in r.stderr  # Hydra's rules, as for training
