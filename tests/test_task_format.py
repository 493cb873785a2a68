"""Tokenizer and task format: Unicode round trips, coordinates, labels, truncation and bad layout lines."""

from __future__ import annotations

import subprocess
import sys

import pytest

from data_pipeline.synthetic import render_text_page
from model.kosmos import IGNORE_INDEX
from model.processor import ImageProcessor
from model.task_format import LayoutError, TaskFormat
from model.tokenizer import Tokenizer, special_symbols
from tests.conftest import UNICODE_LINES


@pytest.mark.parametrize(
    "text", [*UNICODE_LINES, "  # Heading\n\n- item\n\tcode  ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 never seen ☃ ﷺ", ""]
)
def test_decode_encode_is_identity(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_specials_are_single_tokens(tokenizer):
    for sym in special_symbols(tokenizer.coord_bins):
        ids = tokenizer.encode(sym)
        assert len(ids) == 1, sym
    assert (tokenizer.bos_id, tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)


def test_prompt_matches_the_reference_layout(tokenizer):
    fmt = TaskFormat(tokenizer, num_image_tokens=5)
    ids, mask = fmt.prompt("ocr")
    assert tokenizer.decode(ids) == "<image></image><ocr>"  # <s> slots are dropped by decode
    assert ids[0] == ids[2] == tokenizer.bos_id
    assert mask == [0, -1, 1, 1, 1, 1, 1, -1, 0]


@pytest.mark.parametrize("size", [(850, 1100), (1600, 400), (300, 900)])
def test_layout_round_trip_within_one_resized_pixel(tokenizer, size):
    w, h = size
    texts = [*UNICODE_LINES, "plain ascii line 42", "mixed é 中 😀 end"]
    page, lines = render_text_page(w, h, seed=3, texts=texts)
    assert len(lines) == len(texts)
    processed = ImageProcessor(max_patches=256)(page)
    fmt = TaskFormat(tokenizer, num_image_tokens=16)
    enc = fmt.encode_layout(lines, (w, h), (processed.width, processed.height))
    n_prompt = 16 + 4
    target = enc.input_ids[n_prompt:]
    assert enc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert enc.labels[n_prompt:] == target and target[-1] == tokenizer.eos_id
    parsed = fmt.parse_layout(target, (processed.width, processed.height), (w, h))
    assert [p["text"] for p in parsed] == [line["text"] for line in lines]
    for p, line in zip(parsed, lines, strict=True):
        for got, want, scale in zip(
            p["bbox"], line["bbox"], (w / processed.width, h / processed.height) * 2, strict=True
        ):
            assert abs(got - want) <= scale  # one resized pixel, mapped back


def test_markdown_sample(tokenizer):
    fmt = TaskFormat(tokenizer, num_image_tokens=4)
    md = "# Title\n\n| a | b |\n|---|---|\n| 1 | 中 |\n"
    enc = fmt.encode_markdown(md)
    ids, _ = fmt.prompt("md")
    assert enc.input_ids[: len(ids)] == ids
    assert tokenizer.decode(enc.input_ids[len(ids) :]) == md
    assert sum(label != IGNORE_INDEX for label in enc.labels) == len(enc.input_ids) - len(ids)


def test_coordinates_clamp_to_the_last_bin(tokenizer):
    fmt = TaskFormat(tokenizer, num_image_tokens=4)
    # A resized frame wider than L (=256): the right edge clamps to <x_255>.
    assert fmt.to_resized([0, 0, 1000, 10], (1000, 1000), (4000, 100)) == [0, 0, 255, 1]
    # A box partly outside the image is clamped into it.
    assert fmt.to_resized([-50, -5, 40, 20], (100, 100), (100, 100)) == [0, 0, 40, 20]


@pytest.mark.parametrize(
    ("bbox", "reason"),
    [
        ([30, 10, 20, 40], "inverted"),
        ([10, 50, 20, 40], "inverted"),
        ([200, 10, 300, 20], "outside"),
        ([1, 2, 3], "4 numbers"),
        ([0, 0, float("nan"), 5], "non-finite"),
    ],
)
def test_bad_layout_lines_raise_layout_error_naming_the_line(tokenizer, bbox, reason):
    fmt = TaskFormat(tokenizer, num_image_tokens=4)
    lines = [{"text": "fine", "bbox": [1, 1, 5, 5]}, {"text": "bad", "bbox": bbox}]
    with pytest.raises(LayoutError, match=rf"line 1: .*{reason}"):
        fmt.encode_layout(lines, (100, 100), (100, 100))


def test_truncation_cuts_at_a_line_boundary(tokenizer):
    fmt = TaskFormat(tokenizer, num_image_tokens=4, max_length=40)
    lines = [{"text": f"line number {i}", "bbox": [0, i * 10, 50, i * 10 + 8]} for i in range(10)]
    enc = fmt.encode_layout(lines, (100, 100), (100, 100))
    assert enc.truncated and len(enc.input_ids) <= 40
    parsed = fmt.parse_layout(enc.input_ids[8:], (100, 100), (100, 100))
    assert parsed and all(p["text"].startswith("line number") for p in parsed)  # only whole lines survive


def test_empty_lines_are_skipped_and_newlines_flattened(tokenizer):
    fmt = TaskFormat(tokenizer, num_image_tokens=4)
    lines = [{"text": "  ", "bbox": [0, 0, 5, 5]}, {"text": "a\nb", "bbox": [0, 0, 5, 5]}]
    enc = fmt.encode_layout(lines, (10, 10), (10, 10))
    assert [p["text"] for p in fmt.parse_layout(enc.input_ids[8:], (10, 10), (10, 10))] == ["a b"]


def test_trainer_cli_on_files_and_a_missing_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"sample text line {i} with words" for i in range(500)), encoding="utf-8")
    out = tmp_path / "tok"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "model.tokenizer",
            "--input",
            str(corpus),
            "--out",
            str(out),
            "--vocab-size",
            "600",
            "--coord-bins",
            "64",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    tok = Tokenizer(out)
    assert tok.coord_bins == 64 and tok.decode(tok.encode("sample ✓")) == "sample ✓"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "model.tokenizer",
            "--input",
            str(corpus),
            "--out",
            str(out),
            "--vocab-size",
            "100",
            "--coord-bins",
            "64",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "vocab_size=100" in r.stderr
    with pytest.raises(FileNotFoundError, match="no sentencepiece model"):
        Tokenizer(tmp_path / "nowhere")


def test_tokenizer_trains_from_webdataset_shards(tmp_path):
    import io
    import json
    import tarfile

    from model.tokenizer import iter_texts, train_tokenizer

    shard = tmp_path / "shard-00000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(200):
            for ext, payload in (
                (
                    "layout.json",
                    json.dumps(
                        {
                            "width": 10,
                            "height": 10,
                            "lines": [{"text": f"ocr line {i} ünï", "bbox": [0, 0, 5, 5]}],
                        }
                    ),
                ),
                ("md", f"# heading {i}\n\nmarkdown body {i}"),
            ):
                data = payload.encode()
                info = tarfile.TarInfo(f"pdf_doc{i}_00000.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    texts = list(iter_texts([tmp_path]))
    assert "ocr line 7 ünï" in texts and "# heading 7" in texts and "markdown body 7" in texts
    tok = train_tokenizer(texts, tmp_path / "tok", vocab_size=800, coord_bins=32)
    assert tok.decode(tok.encode("ocr line 7 ünï")) == "ocr line 7 ünï"


def test_layout_grammar_keeps_generated_boxes_well_formed(tokenizer):
    """Random logits through the grammar: every box has four ordered coordinates, then text; no coordinate or
    `</bbox>` outside a box. Without it, the same logits scatter coordinates anywhere."""
    import torch

    fmt = TaskFormat(tokenizer, 8, 1024)
    grammar = fmt.layout_grammar()
    gen = torch.Generator().manual_seed(0)
    xs = {t: i for i, t in enumerate(tokenizer.x_ids)}
    ys = {t: i for i, t in enumerate(tokenizer.y_ids)}

    def sample(process):
        ids = torch.zeros((2, 0), dtype=torch.long)
        for _ in range(300):
            logits = torch.randn(2, tokenizer.vocab_size, generator=gen)
            logits[:, fmt.bbox_id] += 6.0  # boxes often
            logits[:, tokenizer.x_ids + tokenizer.y_ids] += 2.0
            if process:
                logits = grammar(ids, logits)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        return ids.tolist()

    def violations(row):
        bad, boxes, i = 0, 0, 0
        while i < len(row):
            t = row[i]
            if t == fmt.bbox_id:
                box = row[i + 1 : i + 6]
                if len(box) < 5:
                    return bad, boxes  # still open when generation stopped
                x0, y0, x1, y1, end = box
                ok = x0 in xs and y0 in ys and x1 in xs and y1 in ys and end == fmt.ebbox_id
                ok = ok and xs[x1] >= xs[x0] and ys[y1] >= ys[y0]
                ok = ok and (
                    i + 6 >= len(row) or row[i + 6] not in (fmt.bbox_id, fmt.newline_id, tokenizer.eos_id)
                )
                bad += not ok
                boxes += ok
                i += 6
                continue
            bad += t in xs or t in ys or t == fmt.ebbox_id
            i += 1
        return bad, boxes

    results = [violations(row) for row in sample(True)]
    assert all(bad == 0 for bad, _ in results) and sum(b for _, b in results) >= 10
    assert any(violations(row)[0] for row in sample(False))
