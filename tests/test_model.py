"""The model on its own: loss on targets only, generation with a KV cache, checkpointing, FLOPs, presets."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from model.beam import beam_search
from model.config import config_from_dict, get_config
from model.kosmos import IGNORE_INDEX, Kosmos25

ROOT = Path(__file__).resolve().parents[1]


def _inputs(cfg, batch=2, text=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    p, q = cfg.max_patches, cfg.latent_query_num
    patches = torch.zeros(batch, p, cfg.vision.patch_embed_hidden_size + 2)
    n = p - 7  # a few padding rows, as the processor leaves
    patches[:, :n, 0] = torch.arange(n) // 16 + 1
    patches[:, :n, 1] = torch.arange(n) % 16 + 1
    patches[:, :n, 2:] = torch.randn(batch, n, cfg.vision.patch_embed_hidden_size, generator=g)
    ids = torch.randint(10, cfg.text.vocab_size, (batch, q + 3 + text), generator=g)
    ids[:, 0] = 0
    ids[:, 2 : 2 + q] = 0
    mask = torch.zeros_like(ids)
    mask[:, 1], mask[:, 2 : 2 + q], mask[:, 2 + q] = -1, 1, -1
    labels = ids.clone()
    labels[:, : q + 3] = IGNORE_INDEX
    return {
        "flattened_patches": patches,
        "input_ids": ids,
        "image_embeds_position_mask": mask,
        "labels": labels,
    }


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return Kosmos25(get_config("tiny", text={"dropout": 0.0})).eval()


def test_loss_is_the_target_only_cross_entropy(tiny):
    batch = _inputs(tiny.config)
    out = tiny(**batch)
    # Reference: full logits, Hugging Face's shift, mean over labelled positions.
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    want = F.cross_entropy(logits, batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert torch.allclose(out.loss, want, atol=1e-5)
    assert out.num_target_tokens == 2 * 20
    # Prompt and image-slot tokens carry no loss: changing them changes nothing but the context.
    no_logits = tiny(**batch, compute_logits=False)
    assert no_logits.logits is None and torch.allclose(no_logits.loss, out.loss)


def test_gradients_reach_the_vision_encoder(tiny):
    tiny.train()
    out = tiny(**_inputs(tiny.config), compute_logits=False)
    out.loss.backward()
    assert tiny.vision_model.embeddings.patch_projection.weight.grad.abs().sum() > 0
    assert tiny.image_to_text_projection.latent_query.grad.abs().sum() > 0
    # The tied head and embedding are one tensor.
    assert tiny.text_model.lm_head.weight is tiny.text_model.model.embed_tokens.weight


def test_the_image_changes_the_prediction(tiny):
    a = _inputs(tiny.config, seed=0)
    b = dict(a, flattened_patches=_inputs(tiny.config, seed=1)["flattened_patches"])
    with torch.no_grad():
        assert not torch.allclose(tiny(**a).logits, tiny(**b).logits)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = get_config("tiny", text={"dropout": 0.0})
    plain, ckpt = Kosmos25(cfg).train(), Kosmos25(cfg).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.set_activation_checkpointing(True)
    batch = _inputs(cfg)
    for m in (plain, ckpt):
        m(**batch, compute_logits=False).loss.backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_kv_cached_greedy_generation_equals_recomputing(tiny):
    batch = _inputs(tiny.config, text=0)
    prompt = {k: batch[k] for k in ("flattened_patches", "input_ids", "image_embeds_position_mask")}
    new = tiny.generate(**prompt, max_new_tokens=12, eos_token_id=-1)
    assert new.shape == (2, 12)
    ids, mask = prompt["input_ids"], prompt["image_embeds_position_mask"]
    with torch.no_grad():
        for _ in range(12):
            logits = tiny(ids, prompt["flattened_patches"], mask).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1)
    assert torch.equal(new, ids[:, -12:])


def test_sampling_is_seeded_and_stops_at_eos(tiny):
    batch = _inputs(tiny.config, text=0)
    prompt = {k: batch[k] for k in ("flattened_patches", "input_ids", "image_embeds_position_mask")}
    runs = [
        tiny.generate(
            **prompt,
            max_new_tokens=8,
            temperature=1.0,
            eos_token_id=-1,
            generator=torch.Generator().manual_seed(7),
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    greedy = tiny.generate(**prompt, max_new_tokens=8, eos_token_id=-1)
    # A nucleus this small keeps only the top token: sampling becomes greedy.
    assert torch.equal(
        tiny.generate(**prompt, max_new_tokens=8, temperature=1.0, top_p=1e-9, eos_token_id=-1), greedy
    )
    # Stop at the first greedy token of row 0: row 0 ends, the other row is padded after its own stop.
    stop = int(greedy[0, 0])
    out = tiny.generate(**prompt, max_new_tokens=8, eos_token_id=stop)
    assert out[0, 0] == stop
    assert (out[0, 1:] == tiny.config.text.pad_token_id).all()


def _sequence_logprob(model, prompt, rows, process):
    """Sum of log-probabilities of each continuation of a one-item prompt, the logits through `process` (a
    `logits_processor`), by full forward passes (no cache): the reference for beam search."""
    out = []
    for row in rows:
        total = 0.0
        seq, m = prompt["input_ids"], prompt["image_embeds_position_mask"]
        for t, tok in enumerate(row):
            with torch.no_grad():
                logits = model(seq, prompt["flattened_patches"], m).logits[:, -1].float()
            total += float(torch.log_softmax(process(torch.tensor([row[:t]]), logits), -1)[0, tok])
            seq = torch.cat([seq, torch.tensor([[tok]])], dim=1)
            m = torch.cat([m, torch.zeros_like(m[:, :1])], dim=1)
        out.append(total)
    return out


def test_beam_search_finds_the_best_continuation(tiny):
    """Few tokens allowed and enough beams to search every continuation, so the one returned is the best by
    the summed log-probability of full, uncached forward passes: over four steps of two tokens, where the first
    step's best beam leads nowhere (the beams then continue the second's: the KV cache must follow them), and
    over two steps with the end token among three (a row that ends is padded after its end)."""
    batch = _inputs(tiny.config, text=0)
    prompt = {k: batch[k] for k in ("flattened_patches", "input_ids", "image_embeds_position_mask")}
    a, b, end = 11, 12, 13
    pad = tiny.config.text.pad_token_id

    def only(allowed, trap=False):
        def process(generated, logits):
            keep = torch.full_like(logits, float("-inf"))
            keep[:, allowed] = 0.0
            out = logits + keep
            # After a first `a`, a coin toss: the best first token leads nowhere.
            if trap and generated.shape[1]:
                out[generated[:, 0] == a, a] = out[generated[:, 0] == a, b] = 0.0
            return out

        return process

    words = [list(w) for w in itertools.product((a, b), repeat=4)]
    ended = [[end], [a, end], [b, end], [a, a], [a, b], [b, a], [b, b]]
    for process, steps, beams, candidates in (
        (only([a, b], True), 4, 8, words),
        (only([a, b, end]), 2, 3, ended),
    ):
        found = tiny.generate(
            **prompt,
            max_new_tokens=steps,
            eos_token_id=end,
            logits_processor=process,
            num_beams=beams,
            length_penalty=0.0,
        )
        with torch.no_grad():
            image = tiny.encode_image(prompt["flattened_patches"])
            same, ranked = beam_search(
                tiny, image, prompt["input_ids"], prompt["image_embeds_position_mask"], beams, steps, end, pad,
                process, length_penalty=0.0, with_scores=True,
            )  # fmt: skip
        assert torch.equal(same, found)
        for i in range(2):
            one = {k: v[i : i + 1] for k, v in prompt.items()}
            scores = _sequence_logprob(tiny, one, candidates, process)
            top = max(range(len(candidates)), key=scores.__getitem__)
            best = candidates[top]
            row = found[i].tolist()
            assert row[: len(best)] == best
            assert all(t == pad for t in row[len(best) :])
            assert abs(ranked[i] - scores[top]) < 3e-5  # the cached beams scored as the uncached reference
    # Beams are a deterministic search.
    with pytest.raises(ValueError, match="num_beams"):
        tiny.generate(**prompt, max_new_tokens=4, temperature=1.0, num_beams=2)


@pytest.mark.parametrize(("preset", "recompute"), [("tiny", False), ("small", False), ("small", True)])
def test_estimate_flops_matches_a_flop_counter(preset, recompute):
    """Within 5% of PyTorch's FLOP counter, with activation checkpointing's second forward pass counted."""
    cfg = get_config(preset, activation_checkpointing=recompute)
    model = Kosmos25(cfg)
    batch = _inputs(cfg, batch=1, text=64)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(**batch, compute_logits=False).loss.backward()
    estimate = model.estimate_flops(cfg.max_patches, batch["input_ids"].shape[1], 64, recompute=recompute)
    assert abs(estimate / counter.get_total_flops() - 1) < 0.05


@pytest.mark.parametrize("trains", ["frozen_vision", "adapters"])
def test_estimate_flops_counts_what_fine_tuning_computes(trains):
    """With the vision encoder frozen its backward pass is not run; under LoRA only the inputs' gradients are
    (and LoRA's own small matmuls, left out): within 5% of PyTorch's FLOP counter, and below pre-training's."""
    from benchmarks.memory_model import tuner

    cfg = get_config("small")
    model = Kosmos25(cfg)
    if trains == "adapters":
        model = tuner("lora").adapt(model)
    else:
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith("vision_model."))
    assert model.trained_parts() == trains
    batch = _inputs(cfg, batch=1, text=64)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(**batch, compute_logits=False).loss.backward()
    text = batch["input_ids"].shape[1]
    estimate = model.estimate_flops(cfg.max_patches, text, 64, trains=trains)
    assert abs(estimate / counter.get_total_flops() - 1) < 0.05, estimate / counter.get_total_flops()
    assert estimate < 0.8 * model.estimate_flops(cfg.max_patches, text, 64)


def test_presets_sizes():
    with torch.device("meta"):
        full = Kosmos25(get_config("kosmos-2.5"))
        small = Kosmos25(get_config("small"))
    assert (
        full.num_parameters() > 1.3e9 and full.num_parameters() < 1.4e9
    )  # the paper's 1.3B (1.37B with embeddings)
    assert 50e6 < small.num_parameters() < 150e6
    cfg = get_config("small")
    assert (cfg.max_patches, cfg.latent_query_num, cfg.text.vocab_size) == (1024, 512, 32000)


def test_bad_configs_fail_with_the_field_name():
    with pytest.raises(ValueError, match="unknown model preset"):
        get_config("huge")
    with pytest.raises(ValueError, match="text.embed_dim"):
        get_config("tiny", text={"embed_dim": 130})
    with pytest.raises(ValueError, match="unknown model config field: text.layerz"):
        get_config("tiny", text={"layerz": 3})
    with pytest.raises(ValueError, match="max_patches"):
        get_config("tiny", max_patches=100000)


def test_wrong_patch_width_is_a_clear_error(tiny):
    batch = _inputs(tiny.config)
    batch["flattened_patches"] = batch["flattened_patches"][..., :100]
    with pytest.raises(ValueError, match="flattened_patches rows have 100 values"):
        tiny(**batch)


def test_hydra_configs_compose_into_model_configs():
    """The presets are structured configs: a field is overridden without `+`, its type is checked, and an
    unknown key is refused, all by Hydra."""
    from hydra.errors import ConfigCompositionException

    from model.config import register_hydra_presets

    register_hydra_presets()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        for preset in ("tiny", "small", "kosmos-2.5"):
            cfg = compose("pretrain", overrides=[f"model={preset}", "stage=mixed", "model.text.layers=3"])
            model_cfg = config_from_dict(cfg.model)
            assert model_cfg.name == preset and model_cfg.text.layers == 3
            assert cfg.stage.steps == 140000 and cfg.optim.lr == 2e-4
        assert compose("pretrain", overrides=["model=small"]).model.vision.hidden_size == 384
        with pytest.raises(ConfigCompositionException, match="Error merging override model.text.layers=many"):
            compose("pretrain", overrides=["model.text.layers=many"])
        with pytest.raises(ConfigCompositionException, match="Could not override 'model.bogus'"):
            compose("pretrain", overrides=["model.bogus=1"])


def test_model_package_never_imports_deepspeed():
    for path in (ROOT / "model").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not any(n.split(".")[0] == "deepspeed" for n in names), path


def test_vision_attention_without_a_mask_equals_the_masked_one():
    """Rows of 64, 40 and 17 real patches (padding at the end, as the processor makes it) and one without
    padding: the per-length groups, no mask, give the masked attention's outputs within 1e-5, padding positions
    included (the resampler reads them); a batch without padding takes one group of full length (no mask, the
    flash-capable kernel); padding elsewhere than at a row's end falls back to the mask."""
    from model.processor import ImageProcessor
    from model.vision import KeyLayout, VisionModel

    torch.manual_seed(0)
    cfg = get_config("tiny").vision
    model = VisionModel(cfg).eval()
    width = cfg.patch_embed_hidden_size
    patches = torch.zeros(4, 64, 2 + width)
    for row, n in enumerate((64, 40, 17, 64)):
        patches[row, :n, 0] = torch.arange(n) // 8 + 1
        patches[row, :n, 1] = torch.arange(n) % 8 + 1
        patches[row, :n, 2:] = torch.randn(n, width)
    keys = KeyLayout.of(patches)
    assert [(n, r.tolist()) for n, r in keys.groups] == [(17, [2]), (40, [1]), (64, [0, 3])]

    def masked(p):
        x, forced = model.embeddings(p), KeyLayout(KeyLayout.of(p).mask, None)
        for layer in model.encoder.layer:
            x = layer(x, forced)
        return model.layernorm(x)

    with torch.no_grad():
        assert (model(patches) - masked(patches)).abs().max() < 1e-5
    full = KeyLayout.of(patches[[0, 3]])
    assert len(full.groups) == 1 and full.groups[0][0] == 64
    holed = patches.clone()
    holed[0, 5] = 0
    assert KeyLayout.of(holed).groups is None
    import numpy as np
    from PIL import Image

    page = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 300, 3), dtype=np.uint8))
    made = ImageProcessor(64)(page)
    assert made.rows * made.cols < 64  # padded, at the end of the row: the unmasked path
    assert KeyLayout.of(made.flattened_patches[None]).groups[0][0] == made.rows * made.cols


def test_latent_queries_grow_by_repeating_each(tiny):
    """`grow_latents`: a model with twice the latent queries loads the weights with each query repeated in place
    (copies side by side), every other weight as it was; it reads the image through the new count of slots, and
    a count that is no multiple of the old one is refused by name."""
    from model.kosmos import grow_latents

    key = "image_to_text_projection.latent_query"
    state = tiny.state_dict()
    q = tiny.config.latent_query_num
    grown = Kosmos25(get_config("tiny", text={"dropout": 0.0}, latent_query_num=2 * q)).eval()
    grown.load_full_state_dict(grow_latents(state, 2 * q))
    new = grown.state_dict()
    assert torch.equal(new[key][0::2], state[key]) and torch.equal(new[key][1::2], state[key])
    assert all(torch.equal(new[k], v) for k, v in state.items() if k != key)
    assert grow_latents(state, q) is state
    inputs = _inputs(grown.config)
    assert grown.encode_image(inputs["flattened_patches"]).shape[1] == 2 * q
    assert grown(**inputs).loss.isfinite()
    for bad in (q + 1, q // 2):
        with pytest.raises(ValueError, match=f"{q} latent queries cannot grow to {bad}"):
            grow_latents(state, bad, "w.pt")
