"""KOSMOS-2.5 assembled: vision encoder → L2-normalised features → resampler → decoder, with the
target-only language-model loss, KV-cached generation and a FLOPs estimate.

Parameter names equal Hugging Face's `Kosmos2_5ForConditionalGeneration`, so a state dict moves between
the two unchanged (`model/hf.py`). This module never imports deepspeed: parallelism lives in `train/`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.beam import beam_search
from model.config import ModelConfig
from model.decoder import KVCache, TextAttention, TextTransformer
from model.vision import RMSNorm, VisionModel

IGNORE_INDEX = -100


@dataclass
class KosmosOutput:
    """`loss` is the mean cross-entropy over target tokens; `logits` covers every position unless the
    caller asked for `compute_logits=False` (training: logits are then made only where labels are)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    num_target_tokens: int = 0
    loss_sum: torch.Tensor | None = None  # summed over target tokens: trainers normalise by a global count
    sample_loss_sums: torch.Tensor | None = None  # (B,) detached per-sample sums, for per-source metrics
    sample_tokens: torch.Tensor | None = None  # (B,) target tokens per sample


class ImageToTextProjection(nn.Module):
    """Resampler: learned latent queries attend over `[projected image features; queries]`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.text.embed_dim
        self.dense = nn.Linear(cfg.vision.hidden_size, d)
        self.latent_query = nn.Parameter(torch.randn(cfg.latent_query_num, d))
        self.x_attn = TextAttention(d, cfg.text.attention_heads, cfg.text.attention_dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.dense(features)
        q = self.latent_query.unsqueeze(0).expand(h.shape[0], -1, -1)
        # No mask, as in the reference: padding patches are attended too (see DESIGN.md).
        return self.x_attn(q, kv_input=torch.cat([h, q], dim=1))


class TextForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.model = TextTransformer(cfg.text)
        self.lm_head = nn.Linear(cfg.text.embed_dim, cfg.text.vocab_size, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight  # tied


class Kosmos25(nn.Module):
    """The multimodal literate model. Call it with Hugging Face's keyword inputs."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.vision_model = VisionModel(cfg.vision)
        self.image_to_text_projection = ImageToTextProjection(cfg)
        self.text_model = TextForCausalLM(cfg)
        self.reset_parameters()
        self.set_activation_checkpointing(cfg.activation_checkpointing)
        if cfg.compile:
            for layer in [*self.vision_model.encoder.layer, *self.text_model.model.layers]:
                layer.compile()

    # ------------------------------------------------------------------ setup
    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
                if m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        nn.init.normal_(self.image_to_text_projection.latent_query, std=1.0)
        if self.config.image_proj_init_std is not None:
            nn.init.normal_(self.image_to_text_projection.dense.weight, std=self.config.image_proj_init_std)
        # Sub-LN initialisation (Magneto / torchscale): scale the value, output and FFN projections.
        gain = math.sqrt(math.log(2 * self.config.text.layers))
        for block in self.text_model.model.layers:
            for lin in (block.self_attn.v_proj, block.self_attn.out_proj, block.ffn.fc1, block.ffn.fc2):
                lin.weight.mul_(gain)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.vision_model.activation_checkpointing = enabled
        self.text_model.model.activation_checkpointing = enabled

    def load_full_state_dict(self, state: dict, origin: str = "state dict") -> None:
        """Load every weight; the tied output projection may be absent (it is the input embedding)."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "text_model.lm_head.weight"]
        if missing or unexpected:
            raise ValueError(
                f"{origin}: weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---------------------------------------------------------------- forward
    def encode_image(self, flattened_patches: torch.Tensor) -> torch.Tensor:
        """Patches `(B, P, 2+p*p*3)` → image embeddings `(B, latent_query_num, embed_dim)`."""
        expected = self.config.vision.patch_embed_hidden_size + 2
        if flattened_patches.shape[-1] != expected:
            raise ValueError(
                f"flattened_patches rows have {flattened_patches.shape[-1]} values; this model takes {expected}"
            )
        features = F.normalize(self.vision_model(flattened_patches), dim=-1)
        return self.image_to_text_projection(features)

    def forward(
        self,
        input_ids: torch.Tensor,
        flattened_patches: torch.Tensor | None = None,
        image_embeds_position_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        compute_logits: bool = True,
        width: torch.Tensor | None = None,  # accepted for Hugging Face compatibility; unused
        height: torch.Tensor | None = None,  # accepted for Hugging Face compatibility; unused
    ) -> KosmosOutput:
        """`labels` follow the Hugging Face convention: aligned with `input_ids`, shifted inside, -100 ignored."""
        if image_embeds is None and flattened_patches is not None:
            image_embeds = self.encode_image(flattened_patches)
        hidden = self.text_model.model(
            input_ids,
            image_embeds=image_embeds,
            image_embeds_position_mask=image_embeds_position_mask,
            attention_mask=attention_mask,
        )
        out = KosmosOutput(image_embeds=image_embeds)
        if labels is not None:
            targets = labels[:, 1:]
            keep = targets != IGNORE_INDEX
            out.num_target_tokens = int(keep.sum())
            # Only target positions reach the vocabulary projection: prompt and image slots never need logits.
            logits = self.text_model.lm_head(hidden[:, :-1][keep]).float()
            per_token = F.cross_entropy(logits, targets[keep], reduction="none")
            out.loss_sum = per_token.sum()
            out.loss = out.loss_sum / max(out.num_target_tokens, 1)
            rows = keep.nonzero()[:, 0]
            out.sample_loss_sums = torch.zeros(keep.shape[0], device=per_token.device).index_add(
                0, rows, per_token.detach()
            )
            out.sample_tokens = keep.sum(dim=1)
        if compute_logits:
            out.logits = self.text_model.lm_head(hidden)
        return out

    # ------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        flattened_patches: torch.Tensor,
        input_ids: torch.Tensor,
        image_embeds_position_mask: torch.Tensor,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
        logits_processor=None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> torch.Tensor:
        """Continue each prompt. Greedy when `temperature == 0`, else temperature (and nucleus) sampling;
        `num_beams > 1`: beam search (`model.beam`; K times the decoding work).
        `logits_processor(generated, logits) -> logits`, if given, sees the tokens generated so far `(B, t)`
        and the next token's logits `(B, V)` (e.g. `TaskFormat.layout_grammar()` keeps boxes well formed).

        Returns the new tokens `(B, <= max_new_tokens)`; a row that has produced `eos_token_id` is padded
        with the pad id afterwards.
        """
        text = self.config.text
        eos = text.eos_token_id if eos_token_id is None else eos_token_id
        if num_beams < 1 or (num_beams > 1 and temperature > 0):
            raise ValueError(f"num_beams={num_beams}: >= 1, and beam search is deterministic (temperature 0)")
        image_embeds = self.encode_image(flattened_patches)
        if num_beams > 1:
            return beam_search(
                self,
                image_embeds,
                input_ids,
                image_embeds_position_mask,
                num_beams,
                max_new_tokens,
                eos,
                text.pad_token_id,
                logits_processor,
                length_penalty,
            )
        b = input_ids.shape[0]
        cache, hidden = self.prefill(image_embeds, input_ids, image_embeds_position_mask, max_new_tokens)
        model = self.text_model.model
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        out: list[torch.Tensor] = []
        for _ in range(max_new_tokens):
            logits = self.text_model.lm_head(hidden).float()
            if logits_processor is not None:
                so_far = torch.stack(out, dim=1) if out else input_ids.new_zeros((b, 0))
                logits = logits_processor(so_far, logits)
            tok = _pick(logits, temperature, top_p, generator)
            tok = torch.where(done, torch.full_like(tok, text.pad_token_id), tok)
            out.append(tok)
            done |= tok == eos
            if bool(done.all()):
                break
            hidden = model(tok[:, None], cache=cache)[:, -1]
        return torch.stack(out, dim=1) if out else input_ids.new_zeros((b, 0))

    def prefill(
        self,
        image_embeds: torch.Tensor,
        input_ids: torch.Tensor,
        image_embeds_position_mask: torch.Tensor,
        max_new_tokens: int,
    ) -> tuple[KVCache, torch.Tensor]:
        """A KV cache for the prompts and `max_new_tokens` more, filled with the prompts; and the last
        position's hidden state `(B, D)`, whose logits give the first new token."""
        text = self.config.text
        b, t = input_ids.shape
        cache = KVCache(
            text.layers,
            b,
            text.attention_heads,
            t + max_new_tokens,
            text.embed_dim // text.attention_heads,
            image_embeds,
        )
        hidden = self.text_model.model(input_ids, image_embeds, image_embeds_position_mask, cache=cache)
        return cache, hidden[:, -1]

    # ------------------------------------------------------------------ FLOPs
    def trained_parts(self) -> str:
        """What trains, as `estimate_flops` counts it: `all`, `frozen_vision` (nothing of the vision encoder
        trains) or `adapters` (LoRA's matrices only, the vision encoder frozen)."""
        names = [n for n, p in self.named_parameters() if p.requires_grad]
        if any(n.startswith("vision_model.") for n in names):
            return "all"
        return "adapters" if names and all(".lora_" in n for n in names) else "frozen_vision"

    def estimate_flops(
        self,
        num_patches: int | None = None,
        text_len: int = 1024,
        target_len: int | None = None,
        recompute: bool = False,
        trains: str = "all",
    ) -> float:
        """Training FLOPs of one sample: the forward pass and what the backward pass computes.

        `text_len` counts every decoder position, image slots included; `target_len` the positions that
        get logits (default: those after the image slots). Matmuls count 2 FLOPs per multiply-add; attention
        scores and weighted sums are counted in full (no causal discount), as MFU conventions do. `recompute`
        adds the second forward pass of the layers that activation checkpointing runs again. `trains`
        (`trained_parts()`): `all` is 3x the forward pass (gradients of the inputs and of the weights); with
        the vision encoder frozen it has no backward pass (nor a second forward); with `adapters` only, the
        weights' gradients are LoRA's (negligible) and the backward pass computes the inputs' gradients.
        """
        if trains not in ("all", "frozen_vision", "adapters"):
            raise ValueError(f"trains={trains!r}: all, frozen_vision or adapters")
        c, v, t = self.config, self.config.vision, self.config.text
        p = c.max_patches if num_patches is None else num_patches
        q = c.latent_query_num
        target = max(text_len - q - 3, 0) if target_len is None else target_len
        inner = v.num_attention_heads * v.head_dim
        d = t.embed_dim
        # Weight matmuls (backward: the inputs' and the weights' gradients) and attention's (both operands').
        vision_layers = v.num_hidden_layers * (
            p * (4 * v.hidden_size * inner + 3 * v.hidden_size * v.intermediate_size) + 2 * p * p * inner
        )
        vision = p * v.patch_embed_hidden_size * v.hidden_size + vision_layers
        decoder_weights = t.layers * text_len * (4 * d * d + 2 * d * t.ffn_dim)
        decoder_attention = t.layers * 2 * text_len * text_len * d
        text_weights = p * v.hidden_size * d + (p + q) * 2 * d * d + q * 2 * d * d  # the resampler's
        text_weights += decoder_weights + target * d * t.vocab_size  # the decoder's and the head's
        text_attention = 2 * q * (p + q) * d + decoder_attention
        text = text_weights + text_attention
        backward = {
            "all": 2 * (vision + text),
            "frozen_vision": 2 * text,
            "adapters": text_weights + 2 * text_attention,
        }[trains]
        again = (
            (vision_layers if trains == "all" else 0) + decoder_weights + decoder_attention
            if recompute
            else 0
        )
        return 2 * float(vision + text + backward + again)


def _pick(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = sorted_p.cumsum(dim=-1) - sorted_p > top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def grow_latents(state: dict, n: int, origin: str = "state dict") -> dict:
    """`state` with its resampler's latent queries grown to `n`, a multiple of their number: each query is
    repeated in place (q0 q0 q1 q1 ...), so the grown model starts near the old one (the queries are among the
    resampler's keys too, so its attention shifts a little) and training parts the copies (they sit at other
    decoder positions). For a curriculum stage that reads longer text than the one before: the image is read
    through more queries."""
    key = "image_to_text_projection.latent_query"
    old = state[key].shape[0]
    if n == old:
        return state
    if n < old or n % old:
        raise ValueError(f"{origin}: {old} latent queries cannot grow to {n} (a multiple of {old} is needed)")
    return {**state, key: state[key].repeat_interleave(n // old, dim=0)}


def build_model(cfg: ModelConfig) -> Kosmos25:
    return Kosmos25(cfg)
