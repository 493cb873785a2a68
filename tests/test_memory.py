"""The memory model against real CPU training steps (`benchmarks/memory_model.py` does the measuring)."""

from __future__ import annotations

import pytest

from benchmarks.memory_model import _case, measure, predict
from model.config import get_config
from model.memory import Plan, activation_costs, estimate


@pytest.fixture(scope="module")
def framework() -> float:
    """The process's own memory besides the model's parts, from the smallest case, as the benchmark takes it."""
    calibration = "tiny:1:256:64:0:2:1"
    model = predict(_case(calibration))
    return measure(calibration, 29791)["before"] - (model.between_steps - model.framework)


@pytest.mark.parametrize(
    "spec",
    [
        "small:4:1024:256:0:2:1",  # ZeRO-2, one rank
        "small:8:1024:512:1:2:1",  # activation checkpointing
        "small:4:1024:256:0:3:2",  # ZeRO-3, two ranks under the launcher
    ],
)
def test_the_memory_model_predicts_a_cpu_steps_peak_within_15_percent(spec, framework):
    predicted = predict(_case(spec), framework).peak
    measured = measure(spec, 29792 + hash(spec) % 50)["peak"]
    assert abs(predicted / measured - 1) < 0.15, (spec, predicted / 2**20, measured / 2**20)


def test_activations_are_measured_per_token_and_scale():
    """The saved bytes of a layer grow linearly with its tokens (flash-style attention, no n^2 part on the
    CPU), the resampler's have a constant part (its latent queries), and the paper's model without
    checkpointing at micro batch 8 does not fit an 80 GB GPU while checkpointing fits it."""
    cfg = get_config("kosmos-2.5")
    costs = activation_costs(cfg)
    assert costs.vision_layer.quadratic == 0 and costs.decoder_layer.quadratic == 0
    assert costs.resampler.constant > 0
    # 18 vision layers x 4,096 patches and 24 decoder layers x 4,096 positions, bf16: ~5 and ~6.6 GB a sample
    assert 4.5e9 < 18 * costs.vision_layer.at(4096) < 5.5e9
    assert 6.0e9 < 24 * costs.decoder_layer.at(4096) < 7.0e9
    plain = estimate(cfg, Plan(micro=8, text_len=4096, targets=8 * 1500, world=128), costs=costs)
    ckpt = estimate(
        cfg, Plan(micro=8, text_len=4096, targets=8 * 1500, world=128, checkpointing=True), costs=costs
    )
    assert plain.peak > 80e9 > ckpt.peak
