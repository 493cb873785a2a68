"""The image processor against Hugging Face's `Kosmos2_5ImageProcessor`, and its handling of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Kosmos2_5ImageProcessorPil

from data_pipeline.synthetic import render_text_page
from model.processor import ImageProcessor

# tall, wide, square, tiny, huge (about 45 megapixels), and a letter page
SIZES = {
    "tall": (600, 2400),
    "wide": (2400, 500),
    "square": (1000, 1000),
    "tiny": (12, 9),
    "huge": (5800, 7800),
    "letter": (850, 1100),
}


@pytest.mark.parametrize("max_patches", [256, 4096])
@pytest.mark.parametrize("kind", list(SIZES))
def test_matches_hugging_face(kind, max_patches):
    w, h = SIZES[kind]
    page, _ = render_text_page(w, h, seed=len(kind))
    ref = Kosmos2_5ImageProcessorPil(max_patches=max_patches)(page, return_tensors="pt")
    ours = ImageProcessor(max_patches=max_patches)(page)
    assert ours.flattened_patches.shape == ref["flattened_patches"][0].shape
    assert (ours.flattened_patches - ref["flattened_patches"][0]).abs().max().item() <= 1e-3
    assert (ours.width, ours.height) == (int(ref["width"][0]), int(ref["height"][0]))
    assert ours.rows * ours.cols <= max_patches
    # Pix2Struct resizing fills nearly all of max_patches, so the kept padding costs little.
    assert ours.rows * ours.cols >= 0.9 * max_patches or kind in ("tall", "wide")


def test_rgba_and_grayscale_are_composited_to_rgb():
    rgba = Image.new("RGBA", (64, 48), (0, 0, 0, 0))  # fully transparent → white page
    gray = Image.new("L", (64, 48), 255)
    proc = ImageProcessor(max_patches=16)
    a, b = proc(rgba), proc(gray)
    assert torch.equal(a.flattened_patches, b.flattened_patches)
    ref = Kosmos2_5ImageProcessorPil(max_patches=16)(rgba, return_tensors="pt")["flattened_patches"][0]
    assert (a.flattened_patches - ref).abs().max() <= 1e-3


def test_empty_image_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        ImageProcessor()(Image.new("RGB", (0, 0)))
    with pytest.raises(ValueError, match="empty"):
        ImageProcessor()(np.zeros((0, 10, 3), np.uint8))


def test_one_pixel_image_is_upsampled_to_the_full_grid():
    out = ImageProcessor(max_patches=64)(Image.new("RGB", (1, 1), (200, 10, 10)))
    assert (out.rows, out.cols) == (8, 8)
    assert torch.isfinite(out.flattened_patches).all()


def test_image_over_the_pixel_cap_is_reduced_first(tmp_path):
    proc = ImageProcessor(max_patches=64, max_image_pixels=1_000_000)
    big = Image.new("RGB", (4000, 3000), (255, 255, 255))
    loaded = proc.load(big)
    assert loaded.shape[0] * loaded.shape[1] <= 1_000_000
    assert abs(loaded.shape[1] / loaded.shape[0] - 4 / 3) < 0.01  # aspect ratio kept
    path = tmp_path / "big.jpg"
    big.save(path)
    assert proc(path).flattened_patches.shape == (64, 770)


def test_non_image_file_names_the_file(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a PNG")
    with pytest.raises(ValueError, match=r"notes\.png: not a readable image"):
        ImageProcessor()(bad)
    truncated = tmp_path / "cut.png"
    render_text_page(200, 200)[0].save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"cut\.png"):
        ImageProcessor()(truncated)


def test_wrong_input_types_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        ImageProcessor()(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="expected a PIL image"):
        ImageProcessor()(42)
