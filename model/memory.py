"""Memory of a training step, per device, by parts: a model for planning and for choosing the micro batch.

Activations are measured, not guessed: one layer of each type is built at the model's full width and run
forward on short inputs (on the CPU, in the training dtype) under `torch.autograd.graph.saved_tensors_hooks`,
which see every tensor autograd keeps for the backward pass. What a layer keeps for n tokens is fitted as
`c + a * n + b * n^2` from three lengths (the quadratic part is zero with flash-style attention; the
resampler's latent queries are the constant), so the figures scale to any length. Parameters, gradients and optimizer state follow DeepSpeed's ZeRO stages:

- stage 0-2: the training-dtype weights whole; stage 3: a 1/N share, plus the layers gathered for compute;
- fp32 master weights (a copy even when training in fp32) and AdamW's two moments: 12 bytes a parameter,
  a 1/N share from stage 1 on, in host memory with `offload_optimizer`;
- gradients: the training-dtype gradients whole at stage 0-1; from stage 2 an fp32 1/N share plus the
  reduction buckets (`reduce_bucket_size` elements, twice with `overlap_comm`; on a GPU the whole bucket is
  reserved, in host memory only what is written).

A step's peak is what is held between steps (parameters, optimizer state, ZeRO-3's gradient partition, the
process's own `framework`, stated by the caller) plus the larger of the backward pass's start (the micro
batch's saved activations, the loss's fp32 buffers: the target tokens' log-softmax and the gradients of it and
of the logits, one layer recomputed under activation checkpointing) and its end (the gradients formed): the
activations are freed as the gradients appear. `benchmarks/memory_model.py` checks it against real steps.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass

import torch

from model.config import ModelConfig

GIB = 1024**3


@dataclass(frozen=True)
class Saved:
    """Bytes a module keeps for the backward pass over n tokens: `constant + linear * n + quadratic * n^2`."""

    linear: float
    quadratic: float = 0.0
    constant: float = 0.0

    def at(self, n: int) -> float:
        return self.constant + self.linear * n + self.quadratic * n * n

    def __sub__(self, other: Saved) -> Saved:
        return Saved(
            max(self.linear - other.linear, 0.0),
            max(self.quadratic - other.quadratic, 0.0),
            max(self.constant - other.constant, 0.0),
        )


@dataclass(frozen=True)
class ActivationCosts:
    """Per sample: each vision layer and the rest of the encoder over patches, the resampler over patches, each
    decoder layer and the rest of the decoder over positions, and the loss over target tokens."""

    vision_layer: Saved
    vision_rest: Saved
    resampler: Saved
    decoder_layer: Saved
    decoder_rest: Saved
    loss: Saved


def saved_bytes(run, exclude: set[int]) -> int:
    """Bytes of the distinct storages autograd saves while `run()` executes, storages in `exclude` (the
    parameters) left out."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in exclude:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


def _fit(measure, lengths: tuple[int, int, int]) -> Saved:
    """`constant + linear * n + quadratic * n^2` through the bytes measured at three lengths (no negative part:
    a quadratic term that comes out below zero is measurement noise, and the line is fitted instead)."""
    import numpy as np

    ns = np.array(lengths, dtype=float)
    ys = np.array([measure(int(n)) for n in lengths], dtype=float)
    c, lin, quad = np.linalg.solve(np.stack([np.ones(3), ns, ns**2], axis=1), ys)
    if quad < 1e-9 * max(abs(lin), 1.0):
        lin, c = np.polyfit(ns, ys, 1)
        quad = 0.0
    return Saved(max(float(lin), 0.0), float(quad), max(float(c), 0.0))


def activation_costs(cfg: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> ActivationCosts:
    """Measure `cfg`'s layers (one of each, full width) in `dtype` on the CPU, once per process. Dropout is
    measured as set in `cfg` (its masks are saved)."""
    measured = dataclasses.replace(cfg, activation_checkpointing=False, compile=False)  # not what is saved
    return _measured(json.dumps(measured.to_dict(), sort_keys=True), str(dtype).removeprefix("torch."))


@functools.lru_cache(maxsize=16)
def _measured(cfg_json: str, dtype_name: str) -> ActivationCosts:
    from model.kosmos import ImageToTextProjection, Kosmos25

    cfg, dtype = ModelConfig.from_dict(json.loads(cfg_json)), getattr(torch, dtype_name)
    one = dataclasses.replace(
        cfg,
        vision=dataclasses.replace(cfg.vision, num_hidden_layers=1),
        text=dataclasses.replace(cfg.text, layers=1),
        activation_checkpointing=False,
        compile=False,
    )
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = Kosmos25(one).to(dtype).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    v, t = cfg.vision, cfg.text
    patch = v.patch_embed_hidden_size

    def patches(n: int) -> torch.Tensor:
        x = torch.randn(1, n, 2 + patch, dtype=dtype)
        x[0, :, 0] = torch.arange(n) // 64 + 1
        x[0, :, 1] = torch.arange(n) % 64 + 1
        return x

    def hidden(n: int, width: int) -> torch.Tensor:
        return torch.randn(1, n, width, dtype=dtype, requires_grad=True)

    vision = model.vision_model
    from model.vision import KeyLayout

    def vision_layer(n: int) -> float:
        x, keys = hidden(n, v.hidden_size), KeyLayout.of(patches(n))
        return saved_bytes(lambda: vision.encoder.layer[0](x, keys), params)

    def vision_whole(n: int) -> float:
        p = patches(n)
        return saved_bytes(lambda: torch.nn.functional.normalize(vision(p), dim=-1), params)

    resampler: ImageToTextProjection = model.image_to_text_projection

    def resample(n: int) -> float:
        x = hidden(n, v.hidden_size)
        return saved_bytes(lambda: resampler(x), params)

    decoder = model.text_model.model

    def decoder_layer(n: int) -> float:
        x = hidden(n, t.embed_dim)
        return saved_bytes(lambda: decoder.layers[0](x, None, True), params)

    def decoder_whole(n: int) -> float:
        ids = torch.randint(4, t.vocab_size, (1, n))
        decoder.embed_tokens.weight.requires_grad_(True)
        return saved_bytes(lambda: decoder(ids), params)

    head = model.text_model.lm_head

    def loss(n: int) -> float:
        x = hidden(n, t.embed_dim)
        targets = torch.randint(4, t.vocab_size, (n,))
        return saved_bytes(
            lambda: torch.nn.functional.cross_entropy(head(x[0]).float(), targets, reduction="none").sum(),
            params,
        )

    lengths = (32, 64, 128)
    vl, dl = _fit(vision_layer, lengths), _fit(decoder_layer, lengths)
    return ActivationCosts(
        vision_layer=vl,
        vision_rest=_fit(vision_whole, lengths) - vl,
        resampler=_fit(resample, lengths),
        decoder_layer=dl,
        decoder_rest=_fit(decoder_whole, lengths) - dl,
        loss=_fit(loss, (16, 32, 64)),
    )


@dataclass(frozen=True)
class Plan:
    """One run's shape on one device."""

    micro: int  # samples in a micro batch
    text_len: int  # decoder positions of the micro batch (its longest sample, padding included)
    targets: int  # target tokens of the micro batch, all samples
    checkpointing: bool = False
    zero_stage: int = 2
    world: int = 1
    dtype_bytes: int = 2  # 2: bf16 training, 4: fp32
    offload_optimizer: bool = False
    offload_params: bool = False
    reduce_bucket: int = 500_000_000  # elements
    prefetch_bucket: int = 50_000_000  # elements ZeRO-3 gathers ahead
    overlap_comm: bool = True
    device: str = "cuda"  # "cuda": buckets reserved whole; "cpu": host memory, only what is written counts
    framework: float = 0.0  # bytes the process holds besides (CUDA context, allocator slack)
    # Fine-tuning: the parameters that train (None: all), those it adds (LoRA's matrices), and whether the
    # vision encoder is frozen (nothing before it trains, so autograd saves none of its activations).
    trainable: int | None = None
    added: int = 0
    vision_frozen: bool = False


def zero_fields(zero) -> dict:
    """The `Plan` fields a DeepSpeed `zero_optimization` section sets (a dict or a DictConfig)."""

    def offloads(key: str) -> bool:
        return ((zero.get(key) or {}).get("device") or "none") != "none"

    return dict(
        zero_stage=int(zero.get("stage") or 0),
        offload_optimizer=offloads("offload_optimizer"),
        offload_params=offloads("offload_param"),
        reduce_bucket=int(zero.get("reduce_bucket_size") or 500_000_000),
        prefetch_bucket=int(zero.get("stage3_prefetch_bucket_size") or 50_000_000),
        overlap_comm=bool(zero.get("overlap_comm", False)),
    )


@dataclass(frozen=True)
class Memory:
    """Bytes on one device, by part. `gradients` is what the gradients take once the backward pass has formed
    them; `held` the part of it kept between steps (ZeRO-3's partition and bucket); `early` the part present
    from the start of the backward pass (buckets a GPU allocator reserves when the pass begins)."""

    parameters: float
    optimizer: float
    gradients: float
    activations: float
    loss: float
    recompute: float
    framework: float
    held: float = 0.0
    early: float = 0.0

    @property
    def between_steps(self) -> float:
        return self.parameters + self.optimizer + self.held + self.framework

    @property
    def peak(self) -> float:
        """The backward pass starts with every activation and the loss's buffers and ends with every gradient:
        the peak is the larger of the two (activations are freed as gradients are formed)."""
        start = self.activations + self.loss + self.recompute + self.early
        return self.between_steps + max(start, self.gradients - self.held)

    def describe(self) -> str:
        parts = ("parameters", "optimizer", "gradients", "activations", "loss", "recompute", "framework")
        shown = ", ".join(f"{p} {getattr(self, p) / GIB:.1f}" for p in parts if getattr(self, p))
        return f"{self.peak / GIB:.1f} GiB at the peak ({shown})"


def parameter_count(cfg: ModelConfig) -> tuple[int, int]:
    """All parameters, and those of the largest layer (what ZeRO-3 gathers at once)."""
    from model.kosmos import Kosmos25

    with torch.device("meta"):
        m = Kosmos25(cfg)
    total = sum(p.numel() for p in m.parameters())
    layers = [*m.vision_model.encoder.layer, *m.text_model.model.layers]
    largest = max((sum(p.numel() for p in layer.parameters()) for layer in layers), default=0)
    return total, largest


def estimate(
    cfg: ModelConfig, plan: Plan, patches: int | None = None, costs: ActivationCosts | None = None
) -> Memory:
    """The memory of one training step of `plan` on one device. `patches`: per sample (default the model's
    `max_patches`, which the processor pads every page to)."""
    dtype = torch.bfloat16 if plan.dtype_bytes == 2 else torch.float32
    costs = costs or activation_costs(cfg, dtype)
    p = cfg.max_patches if patches is None else patches
    psi, largest = parameter_count(cfg)
    psi += plan.added
    trained = psi if plan.trainable is None else plan.trainable
    n = shards = max(plan.world, 1)
    b = plan.dtype_bytes
    stage = plan.zero_stage

    # Parameters in the training dtype; ZeRO-3 keeps a share and gathers the layers in use and those
    # prefetched (up to `prefetch_bucket` elements ahead).
    if stage >= 3:
        parameters = 0.0 if plan.offload_params else b * psi / shards
        parameters += b * min(psi, plan.prefetch_bucket + largest)
    else:
        parameters = b * psi
    # fp32 master weights and AdamW's two moments, of the parameters that train.
    optimizer = 0.0 if plan.offload_optimizer else 12 * trained / (shards if stage >= 1 else 1)
    # Gradients. A GPU allocator reserves a bucket whole; in host memory only what is written counts.
    touched = plan.reduce_bucket if plan.device == "cuda" else min(plan.reduce_bucket, trained)
    if stage >= 3:  # an fp32 partition and one bucket, both kept between steps
        gradients = held = 4 * trained / n + b * touched
        early = 0.0
    elif stage == 2:  # an fp32 partition, and the buckets (two with overlap_comm) while the pass runs
        buckets = b * touched * (2 if plan.overlap_comm else 1)
        gradients, held = 4 * trained / n + buckets, 0.0
        early = buckets if plan.device == "cuda" else 0.0
    else:  # whole gradients in the training dtype (and an fp32 partition at stage 1)
        gradients, held, early = b * trained + (4 * trained / n if stage == 1 else 0.0), 0.0, 0.0

    v, t = cfg.vision, cfg.text
    vision_layers = 0 if plan.vision_frozen else v.num_hidden_layers
    layer_v = costs.vision_layer.at(p) if vision_layers else 0.0
    layer_t = costs.decoder_layer.at(plan.text_len)
    rest = costs.resampler.at(p) + costs.decoder_rest.at(plan.text_len)
    rest += costs.vision_rest.at(p) if vision_layers else 0.0
    if plan.checkpointing:  # each layer keeps its input; one layer's activations are rebuilt at a time
        kept = vision_layers * p * v.hidden_size * b + t.layers * plan.text_len * t.embed_dim * b
        recompute = plan.micro * max(layer_v, layer_t)
    else:
        kept = vision_layers * layer_v + t.layers * layer_t
        recompute = 0.0
    activations = plan.micro * (kept + rest)
    # The loss keeps the target tokens' fp32 log-softmax (measured); its backward pass adds the fp32 gradients
    # of the log-softmax and of the logits before they are cast back.
    loss = costs.loss.at(plan.targets) + 8 * plan.targets * t.vocab_size
    return Memory(parameters, optimizer, gradients, activations, loss, recompute, plan.framework, held, early)


def fit(
    cfg: ModelConfig,
    budget: float,
    largest_micro: int,
    make_plan,
    checkpointing: bool | None = None,
    headroom: float = 0.1,
) -> list[tuple[int, bool, Memory, bool]]:
    """The candidates for a run that must stay within `(1 - headroom) * budget` bytes, in the order they are
    preferred: without recomputation at micro batches of 4 or more (largest first), then with activation
    checkpointing (largest first), then without it below 4. Each is `(micro, checkpointing, memory, fits)`;
    the chosen one is the first that fits. `make_plan(micro, checkpointing)` gives the `Plan`; `checkpointing`
    None lets the choice decide it."""
    micros = [m for m in (64, 32, 16, 8, 4, 2, 1) if m <= largest_micro] or [1]
    order = [(m, False) for m in micros if m >= 4] + [(m, True) for m in micros]
    order += [(m, False) for m in micros if m < 4]
    if checkpointing is not None:
        order = [(m, c) for m, c in order if c == checkpointing]
    out = []
    for micro, ckpt in order:
        memory = estimate(dataclasses.replace(cfg, activation_checkpointing=ckpt), make_plan(micro, ckpt))
        out.append((micro, ckpt, memory, memory.peak <= (1 - headroom) * budget))
    return out
