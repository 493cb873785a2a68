"""Pix2Struct-style vision encoder over variable-resolution flattened patches.

Input rows are `[row_id, col_id, p*p*3 pixel values]` (ids start at 1; an all-zero row is padding), as
`model/processor.py` and Hugging Face's `Kosmos2_5ImageProcessor` make them. Attribute names match
Hugging Face's `Kosmos2_5VisionModel` so weights map 1:1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import VisionConfig


class RMSNorm(nn.Module):
    """T5-style layer norm: scale only, no mean subtraction, statistics in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * y.to(self.weight.dtype)


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_projection = nn.Linear(cfg.patch_embed_hidden_size, cfg.hidden_size)
        self.row_embedder = nn.Embedding(cfg.max_num_patches, cfg.hidden_size)
        self.column_embedder = nn.Embedding(cfg.max_num_patches, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, flattened_patches: torch.Tensor) -> torch.Tensor:
        rows = flattened_patches[:, :, 0].long()
        cols = flattened_patches[:, :, 1].long()
        x = self.patch_projection(flattened_patches[:, :, 2:])
        return self.dropout(x + self.row_embedder(rows) + self.column_embedder(cols))


@dataclass
class KeyLayout:
    """Which patches a query may attend to. `mask` is `(B, 1, 1, P)`, True for real patches. When every row's
    padding is at its end (as the processor makes it), `groups` lists `(real length, row indices)`, and the
    attention runs per group over the real keys alone, with no mask: on a GPU that is the flash / memory-
    efficient kernel, which a boolean mask rules out. The outputs are those of the masked attention, padding
    queries included (they attend to their row's real patches in both)."""

    mask: torch.Tensor
    groups: list[tuple[int, torch.Tensor]] | None

    @staticmethod
    def of(flattened_patches: torch.Tensor) -> KeyLayout:
        real = flattened_patches.sum(dim=-1) != 0  # an all-zero row is padding (ids start at 1), as in HF
        lengths = real.sum(dim=-1)
        places = torch.arange(real.shape[1], device=real.device)
        mask = real[:, None, None, :]
        if not bool((real == (places[None, :] < lengths[:, None])).all()):
            return KeyLayout(mask, None)
        by_length: dict[int, list[int]] = {}
        for row, length in enumerate(lengths.tolist()):
            by_length.setdefault(max(int(length), 1), []).append(row)
        return KeyLayout(
            mask,
            [(n, torch.tensor(rows, device=real.device)) for n, rows in sorted(by_length.items())],
        )


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        inner = cfg.num_attention_heads * cfg.head_dim
        self.head_dim = cfg.head_dim
        self.dropout = cfg.attention_dropout
        self.query = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.key = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.value = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.output = nn.Linear(inner, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, keys: KeyLayout) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (
            proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        p = self.dropout if self.training else 0.0
        if keys.groups is None:  # padding not at the end of a row: the boolean key mask
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys.mask, dropout_p=p)
        elif len(keys.groups) == 1 and keys.groups[0][0] == n:  # no padding: the plain (flash) kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:  # each group of rows with the same real length attends to its real keys alone, no mask
            y = torch.empty_like(q)
            for length, rows in keys.groups:
                y[rows] = F.scaled_dot_product_attention(
                    q[rows], k[rows, :, :length], v[rows, :, :length], dropout_p=p
                )
        return self.output(y.transpose(1, 2).reshape(b, n, -1))


class VisionMlp(nn.Module):
    """Gated GELU (tanh approximation) feed-forward, as in T5 v1.1 / Pix2Struct."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.wi_0 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.wi_1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.dropout(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)))


class VisionLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.attention = VisionAttention(cfg)
        self.mlp = VisionMlp(cfg)
        self.pre_attention_layer_norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.pre_mlp_layer_norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, keys: KeyLayout) -> torch.Tensor:
        x = x + self.attention(self.pre_attention_layer_norm(x), keys)
        return x + self.mlp(self.pre_mlp_layer_norm(x))


class VisionEncoder(nn.Module):
    """Holds the layers under `.layer` (the Hugging Face name)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer = nn.ModuleList(VisionLayer(cfg) for _ in range(cfg.num_hidden_layers))


class VisionModel(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = VisionEncoder(cfg)
        self.layernorm = RMSNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.activation_checkpointing = False

    def forward(self, flattened_patches: torch.Tensor) -> torch.Tensor:
        """`(B, P, 2 + p*p*3)` patches → `(B, P, hidden)` features. Padding patches are masked as keys."""
        if flattened_patches.dim() != 3:
            raise ValueError(
                f"flattened_patches must be (batch, patches, 2 + p*p*3); got {tuple(flattened_patches.shape)}"
            )
        keys = KeyLayout.of(flattened_patches)
        x = self.embeddings(flattened_patches)
        for layer in self.encoder.layer:
            if self.activation_checkpointing and self.training:
                x = checkpoint(layer, x, keys, use_reentrant=False)
            else:
                x = layer(x, keys)
        return self.layernorm(x)
