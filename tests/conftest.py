"""Shared fixtures: a small trained tokenizer and a tiny random Hugging Face model, made once per session."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import transformers

from data_pipeline.synthetic import WORDS
from model.tokenizer import Tokenizer, train_tokenizer

UNICODE_LINES = [
    "Café naïve résumé über",
    "東京都 中文 日本語のテキスト",
    "emoji 😀🚀 ok",
    "Ελληνικά русский",
]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Tokenizer:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(2000)] + UNICODE_LINES
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=1200, coord_bins=256)


@pytest.fixture(scope="session")
def hf_tiny_dir(tmp_path_factory):
    """A tiny random `Kosmos2_5ForConditionalGeneration` written by `save_pretrained`."""
    torch.manual_seed(0)
    cfg = transformers.Kosmos2_5Config(
        text_config=dict(
            vocab_size=300, embed_dim=32, layers=2, ffn_dim=64, attention_heads=4, max_position_embeddings=512
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=48,
            head_dim=8,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_num_patches=64,
        ),
        latent_query_num=8,
    )
    model = transformers.Kosmos2_5ForConditionalGeneration(cfg).eval()
    path = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> dict[str, Path]:
    """Two synthetic sources of 6 shards each (one page per shard document)."""
    out = {}
    for name in ("a", "b"):
        src = tmp_path_factory.mktemp(f"txt_{name}")
        rng = random.Random(name)
        for d in range(6):
            lines = [" ".join(rng.choice(WORDS) for _ in range(4)) for _ in range(24)]
            (src / f"{name}{d}.txt").write_text("\n".join(lines))
        root = tmp_path_factory.mktemp(f"shards_{name}")
        from tests.test_build_pdf import build

        build(
            "source=synthetic",
            f"input={src}",
            f"output={root}",
            "workers=2",
            "docs_per_shard=1",
            "filters.languages=all",
            "source.snippets_per_page=6",
            "dedup=false",
        )
        out[name] = root
    return out


@pytest.fixture(scope="session")
def sources(synthetic_shards, tmp_path_factory) -> Path:
    """The two synthetic sources as a sources file, both training the ocr task."""
    path = tmp_path_factory.mktemp("data") / "sources.json"
    path.write_text(
        json.dumps(
            [
                {"name": "a", "root": str(synthetic_shards["a"]), "weight": 1.0, "task": "ocr"},
                {"name": "b", "root": str(synthetic_shards["b"]), "weight": 1.0, "task": "ocr"},
            ]
        )
    )
    return path
