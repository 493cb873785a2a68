"""Parity with Hugging Face's `Kosmos2_5ForConditionalGeneration`, both directions."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from data_pipeline.synthetic import render_text_page
from model.hf import load_hf, save_hf
from model.processor import ImageProcessor


def _batch(num_slots: int, max_patches: int, vocab: int) -> dict[str, torch.Tensor]:
    """Two pages of different sizes through our processor, texts of different lengths right-padded."""
    proc = ImageProcessor(max_patches=max_patches)
    pages = [render_text_page(300, 420, seed=1)[0], render_text_page(640, 200, seed=2)[0]]
    images = proc.batch(pages)
    assert images["width"][0] != images["width"][1]  # the two pages really differ in grid
    g = torch.Generator().manual_seed(0)
    text_len = 9
    ids = torch.randint(5, vocab, (2, 3 + num_slots + text_len), generator=g)
    ids[:, 0] = 0
    ids[:, 2 : 2 + num_slots] = 0
    slots = torch.zeros_like(ids)
    slots[:, 1] = -1
    slots[:, 2 : 2 + num_slots] = 1
    slots[:, 2 + num_slots] = -1
    attention = torch.ones_like(ids)
    attention[1, -4:] = 0
    ids[1, -4:] = 1  # pad
    return {
        "flattened_patches": images["flattened_patches"],
        "input_ids": ids,
        "attention_mask": attention,
        "image_embeds_position_mask": slots,
    }


def _max_diff(a: torch.Tensor, b: torch.Tensor, attention: torch.Tensor) -> float:
    return (a - b)[attention.bool()].abs().max().item()


def test_load_hf_matches_transformers_logits(hf_tiny_dir):
    ref = transformers.Kosmos2_5ForConditionalGeneration.from_pretrained(hf_tiny_dir).eval()
    ours = load_hf(hf_tiny_dir)
    batch = _batch(num_slots=8, max_patches=64, vocab=300)
    with torch.no_grad():
        want = ref(**batch).logits
        got = ours(**batch).logits
        # Without attention_mask (causal only: the fast path) the unpadded positions are the same.
        got_causal = ours(**{k: v for k, v in batch.items() if k != "attention_mask"}).logits
    assert got.shape == want.shape
    assert _max_diff(got, want, batch["attention_mask"]) < 1e-4
    assert _max_diff(got_causal, want, batch["attention_mask"]) < 1e-4
    # The comparison can fail: a perturbed weight moves the logits well past the tolerance.
    with torch.no_grad():
        ours.text_model.model.layers[0].self_attn.v_proj.weight.add_(0.05 * torch.randn(32, 32))
        assert _max_diff(ours(**batch).logits, want, batch["attention_mask"]) > 1e-3


def test_save_hf_loads_in_transformers_with_same_logits(hf_tiny_dir, tmp_path):
    ours = load_hf(hf_tiny_dir)
    with torch.no_grad():  # make the weights ours, not the ones just loaded
        for p in ours.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = save_hf(ours, tmp_path / "exported")
    ref = transformers.Kosmos2_5ForConditionalGeneration.from_pretrained(out).eval()
    batch = _batch(num_slots=8, max_patches=64, vocab=300)
    with torch.no_grad():
        assert _max_diff(ours(**batch).logits, ref(**batch).logits, batch["attention_mask"]) < 1e-4
    # The processor settings travel with the weights, so Hugging Face's pipeline pads patches the same way.
    proc = json.loads((out / "preprocessor_config.json").read_text())
    assert proc["max_patches"] == ours.config.max_patches
    assert ref.text_model.lm_head.weight.data_ptr() == ref.text_model.model.embed_tokens.weight.data_ptr()


def test_load_hf_errors_name_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not a Kosmos-2.5 config"):
        load_hf(tmp_path)
