"""The text decoder: sinusoidal positions + segment embedding, pre-LN blocks with a sub-LN feed-forward,
tied and scaled embeddings, and a preallocated KV cache for generation.

Attribute names match Hugging Face's `Kosmos2_5TextForCausalLM` so weights map 1:1. Sub-LN sits inside
the feed-forward (before fc2) only: the released checkpoint, and so the reference port, has no LayerNorm
inside attention, and we follow the weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import TextConfig


class KVCache:
    """Keys and values of every decoder layer, preallocated to `max_len` and filled in place."""

    def __init__(
        self, num_layers: int, batch: int, heads: int, max_len: int, head_dim: int, like: torch.Tensor
    ):
        shape = (batch, heads, max_len, head_dim)
        self.k = [like.new_zeros(shape) for _ in range(num_layers)]
        self.v = [like.new_zeros(shape) for _ in range(num_layers)]
        self.length = 0  # tokens already stored
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens; {end} requested")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class TextAttention(nn.Module):
    """Multi-head attention with biases; self-attention in the decoder, cross-attention in the resampler."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        kv_input: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        src = x if kv_input is None else kv_input
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(src)), self._heads(self.v_proj(src))
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class TextFFN(nn.Module):
    """fc1 → GELU → LayerNorm (sub-LN) → fc2."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.embed_dim)
        self.ffn_layernorm = nn.LayerNorm(cfg.ffn_dim, eps=cfg.layer_norm_eps)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation_dropout(F.gelu(self.fc1(x)))
        return self.dropout(self.fc2(self.ffn_layernorm(x)))


class TextBlock(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = TextAttention(cfg.embed_dim, cfg.attention_heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.ffn = TextFFN(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool, cache: KVCache | None = None
    ) -> torch.Tensor:
        h = self.self_attn(
            self.self_attn_layer_norm(x),
            attn_mask=attn_mask,
            is_causal=is_causal,
            cache=cache,
            layer_idx=self.layer_idx,
        )
        x = x + self.dropout(h)
        return x + self.ffn(self.final_layer_norm(x))


def sinusoidal_table(num_embeddings: int, dim: int, padding_idx: int | None) -> torch.Tensor:
    """fairseq/tensor2tensor sinusoids: `[sin | cos]` halves, the padding row zero."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    ang = torch.arange(num_embeddings, dtype=torch.float32)[:, None] * freq[None, :]
    table = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(num_embeddings, 1)], dim=1)
    if padding_idx is not None:
        table[padding_idx] = 0
    return table


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_scale = math.sqrt(cfg.embed_dim) if cfg.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad_token_id)
        # Positions start at pad_token_id + 1 (fairseq's convention, kept for checkpoint compatibility).
        self.position_offset = cfg.pad_token_id + 1
        self.register_buffer(
            "position_table",
            sinusoidal_table(
                cfg.max_position_embeddings + self.position_offset, cfg.embed_dim, cfg.pad_token_id
            ),
            persistent=False,
        )
        self.segment_emb = nn.Embedding(2, cfg.embed_dim)
        self.layers = nn.ModuleList(TextBlock(cfg, i) for i in range(cfg.layers))
        self.layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_checkpointing = False

    def positions(self, input_ids: torch.Tensor, past: int) -> torch.Tensor:
        """Position ids: non-pad tokens count from `pad+1` (+ cached length); pad tokens sit on the zero row."""
        not_pad = input_ids.ne(self.cfg.pad_token_id).long()
        pos = (torch.cumsum(not_pad, dim=1) + past) * not_pad + self.cfg.pad_token_id
        if past + input_ids.shape[1] > self.cfg.max_position_embeddings:
            raise ValueError(
                f"sequence of {past + input_ids.shape[1]} tokens exceeds text.max_position_embeddings="
                f"{self.cfg.max_position_embeddings}"
            )
        return pos

    def forward(
        self,
        input_ids: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
        image_embeds_position_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Hidden states after the final LayerNorm, `(B, T, embed_dim)`.

        `image_embeds_position_mask`: 1 on image slots (replaced by `image_embeds`), -1 on `<image>`/`</image>`,
        0 elsewhere; every non-zero position gets segment 1. `attention_mask` (1 = token, 0 = padding) is
        only needed for left padding: right padding never influences earlier positions under a causal mask.
        """
        past = cache.length if cache is not None else 0
        x = self.embed_tokens(input_ids)
        if image_embeds is not None:
            if image_embeds_position_mask is None:
                raise ValueError("image_embeds given without image_embeds_position_mask")
            slots = image_embeds_position_mask == 1
            n_slots = int(slots.sum())
            if n_slots != image_embeds.shape[0] * image_embeds.shape[1]:
                raise ValueError(
                    f"image_embeds_position_mask marks {n_slots} image slots but the resampler gives "
                    f"{image_embeds.shape[0]} x {image_embeds.shape[1]} image embeddings"
                )
            x = x.masked_scatter(slots[..., None], image_embeds.to(x.dtype))
        x = x * self.embed_scale
        pos = self.position_table[self.positions(input_ids, past)].to(x.dtype)
        segment = (
            image_embeds_position_mask.ne(0).long()
            if image_embeds_position_mask is not None
            else torch.zeros_like(input_ids)
        )
        x = self.dropout(x + pos + self.segment_emb(segment))

        attn_mask, is_causal = self._mask(input_ids, attention_mask, past)
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(layer, x, attn_mask, is_causal, use_reentrant=False)
            else:
                x = layer(x, attn_mask, is_causal, cache)
        if cache is not None:
            cache.length += input_ids.shape[1]
        return self.layer_norm(x)

    @staticmethod
    def _mask(
        input_ids: torch.Tensor, attention_mask: torch.Tensor | None, past: int
    ) -> tuple[torch.Tensor | None, bool]:
        t = input_ids.shape[1]
        if attention_mask is None:
            # Causal only: SDPA can use its flash/fused kernels. With a cache, one new token sees everything.
            return None, past == 0 and t > 1
        total = past + t
        causal = torch.ones(t, total, dtype=torch.bool, device=input_ids.device).tril(diagonal=past)
        if attention_mask.shape[1] < total:
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} tokens; {total} needed")
        keys = attention_mask[:, -total:].bool()
        mask = causal[None] & keys[:, None, :]
        # A fully padded query row would softmax over nothing (NaN); let it see itself instead.
        rows = torch.arange(t, device=input_ids.device)
        mask[:, rows, rows + past] = True
        return mask[:, None], False
