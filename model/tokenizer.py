"""SentencePiece tokenizer with byte fallback and the task's special symbols; training CLI.

    python -m model.tokenizer --input shards/ docs/*.txt --out tokenizer/ [--vocab-size 65536] [--coord-bins 4096]

Ids follow the reference vocabulary: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3. `<image> </image> <ocr> <md>
<bbox> </bbox>`, `<x_0>…<x_{L-1}>`, `<y_0>…<y_{L-1}>` and the newline are user-defined symbols, so each is
one token. Text is not normalised (no NFKC, whitespace kept, no dummy prefix): decode(encode(s)) == s for
every Unicode string, which markdown indentation and exact OCR labels need.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

TASK_SYMBOLS = ("<image>", "</image>", "<ocr>", "<md>", "<bbox>", "</bbox>")
MODEL_FILE = "tokenizer.model"
META_FILE = "tokenizer.json"


def special_symbols(coord_bins: int) -> list[str]:
    """All user-defined symbols, in id order after the four control ids."""
    return [
        *TASK_SYMBOLS,
        *(f"<x_{i}>" for i in range(coord_bins)),
        *(f"<y_{i}>" for i in range(coord_bins)),
        "\n",
    ]


class Tokenizer:
    """A trained tokenizer directory (`tokenizer.model` + `tokenizer.json`)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        model_file = path / MODEL_FILE if path.is_dir() else path
        meta_file = model_file.with_name(META_FILE)
        if not model_file.exists():
            raise FileNotFoundError(
                f"{model_file}: no sentencepiece model (train one with `python -m model.tokenizer`)"
            )
        self.path = model_file.parent
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        self.coord_bins = int(
            meta.get(
                "coord_bins",
                sum(1 for i in range(self.sp.get_piece_size()) if self.sp.id_to_piece(i).startswith("<x_")),
            )
        )
        for sym in special_symbols(self.coord_bins):
            if self.sp.piece_to_id(sym) == self.sp.unk_id():
                raise ValueError(f"{model_file}: special symbol {sym!r} is missing from the vocabulary")
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = (
            self.sp.bos_id(),
            self.sp.eos_id(),
            self.sp.pad_id(),
            self.sp.unk_id(),
        )
        self.x_ids = [self.sp.piece_to_id(f"<x_{i}>") for i in range(self.coord_bins)]
        self.y_ids = [self.sp.piece_to_id(f"<y_{i}>") for i in range(self.coord_bins)]

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def token_id(self, piece: str) -> int:
        i = self.sp.piece_to_id(piece)
        if i == self.unk_id and piece != "<unk>":
            raise KeyError(f"{piece!r} is not a single token in {self.path}")
        return i

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Text with task symbols spelled out; `<s>`, `</s>` and `<pad>` are dropped."""
        return self.sp.decode([int(i) for i in ids if int(i) not in (self.bos_id, self.eos_id, self.pad_id)])


def iter_texts(inputs: Iterable[str | Path]) -> Iterator[str]:
    """Text lines from plain files and from webdataset shards (`layout.json` line texts and `md`)."""
    for pattern in inputs:
        paths = [Path(p) for p in sorted(glob.glob(str(pattern), recursive=True))] or [Path(pattern)]
        for p in paths:
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            for f in files:
                if not f.exists():
                    raise FileNotFoundError(f"{f}: no such file")
                if f.name.endswith(".tar"):
                    yield from _shard_texts(f)
                elif f.suffix in {".txt", ".md", ".markdown", ".tex", ".html", ".json", ""}:
                    yield from f.read_text(encoding="utf-8", errors="replace").splitlines()


def _shard_texts(path) -> Iterator[str]:
    from data_pipeline.schema import decode_sample, text_member
    from data_pipeline.storage import iter_samples

    for members in iter_samples(path, wanted=text_member):
        yield from decode_sample(members, errors="replace").texts()


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 65536,
    coord_bins: int = 4096,
    model_type: str = "unigram",
    max_lines: int = 5_000_000,
    num_threads: int = 2,
) -> Tokenizer:
    """Train a tokenizer on `texts` (one sentence per item) and write it to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    symbols = special_symbols(coord_bins)
    if vocab_size <= len(symbols) + 4 + 256:
        raise ValueError(
            f"vocab_size={vocab_size} leaves no room for learned pieces: {len(symbols)} special symbols "
            f"(coord_bins={coord_bins}) + 4 control ids + 256 byte pieces are reserved"
        )
    lines = (t for t in texts if t.strip())
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines,
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            user_defined_symbols=symbols,
            bos_id=0,
            pad_id=1,
            eos_id=2,
            unk_id=3,
            bos_piece="<s>",
            pad_piece="<pad>",
            eos_piece="</s>",
            unk_piece="<unk>",
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            character_coverage=0.9995,
            input_sentence_size=max_lines,
            shuffle_input_sentence=True,
            max_sentence_length=16384,
            hard_vocab_limit=False,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise ValueError(f"sentencepiece training failed: {e}") from e
    (out / MODEL_FILE).write_bytes(model.getvalue())
    (out / META_FILE).write_text(
        json.dumps({"coord_bins": coord_bins, "vocab_size_requested": vocab_size}, indent=2)
    )
    return Tokenizer(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m model.tokenizer", description="Train the Literate tokenizer."
    )
    ap.add_argument(
        "--input", nargs="+", required=True, help="text files, folders, globs or webdataset shards"
    )
    ap.add_argument("--out", required=True, help="output folder (tokenizer.model + tokenizer.json)")
    ap.add_argument("--vocab-size", type=int, default=65536)
    ap.add_argument("--coord-bins", type=int, default=4096, help="L: <x_0>..<x_{L-1}> and <y_0>..<y_{L-1}>")
    ap.add_argument(
        "--model-type",
        default="unigram",
        choices=["unigram", "bpe", "char"],
        help="char: one piece per character (with --vocab-size just above the reserved ids), for learning to read",
    )
    ap.add_argument("--max-lines", type=int, default=5_000_000, help="sample at most this many lines")
    args = ap.parse_args(argv)
    try:
        tok = train_tokenizer(
            iter_texts(args.input),
            args.out,
            args.vocab_size,
            args.coord_bins,
            args.model_type,
            args.max_lines,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {tok.path / MODEL_FILE}: {tok.vocab_size} pieces, coord_bins={tok.coord_bins}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
