"""Texts for the reading warm-up's snippets: random letters (no language prior, so only reading lowers the loss),
random words of a word list, mixes of digits, punctuation and letters, or runs of consecutive words of text files
(`text`: prose and code as written, capitals, digits and punctuation included). Held-out sets differ from training
by seed and, where a word list, text files or fonts are used, by item: `held_out(name, fraction)` puts a fixed
share of words (and of text and font files) aside by a hash of their name, the same on every machine.

    python -m data_pipeline.snippet_text --kind words --count 100000 --length 1 3 --split train --out texts/words.txt

writes one snippet per line, the input of `python -m data_pipeline.build source=synthetic source.mode=snippet`.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import random
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

KINDS = ("letters", "words", "mixed", "text")
SPLITS = ("train", "held_out", "all")
LOWERCASE = "abcdefghijklmnopqrstuvwxyz"
WORD_LIST = "/usr/share/dict/words"  # Debian's wamerican
TEXT_FILES = "/usr/lib/python3*/*.py"  # Python's standard library: English docstrings and comments, and code
PUNCTUATION = ".,:;!?()-/'\"%$#&+"


@dataclass(frozen=True)
class TextSpec:
    """What a snippet's text is. `length` counts characters (`letters`), words (`words`, `text`) or tokens
    (`mixed`)."""

    kind: str = "letters"
    length: tuple[int, int] = (1, 3)
    alphabet: str = LOWERCASE  # letters drawn by `letters` and `mixed`
    words: str = WORD_LIST  # one word per line; only words of letters a-z/A-Z are kept
    files: str = TEXT_FILES  # `text`: a glob of text files; runs of their printable-ASCII words
    held_out: float = 0.1  # share of words (text files) set aside for held-out sets
    split: str = "train"  # train | held_out | all: which words a set draws from
    length_weights: tuple[float, ...] | None = None  # one per length low..high; None: lengths drawn uniformly

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"text.kind={self.kind}: choose from {', '.join(KINDS)}")
        low, high = self.length
        if not 1 <= low <= high:
            raise ValueError(f"text.length=[{low}, {high}]: needs 1 <= low <= high")
        weights = self.length_weights
        if weights is not None and (
            len(weights) != high - low + 1 or min(weights) < 0 or not sum(weights) > 0
        ):
            raise ValueError(
                f"text.length_weights={list(weights)}: needs {high - low + 1} weights >= 0 (one per length "
                f"{low}..{high}), not all 0"
            )
        if self.split not in SPLITS:
            raise ValueError(f"text.split={self.split}: choose from {', '.join(SPLITS)}")
        if not 0.0 <= self.held_out < 1.0:
            raise ValueError(f"text.held_out={self.held_out}: needs 0 <= held_out < 1")
        if not self.alphabet:
            raise ValueError("text.alphabet is empty")
        if self.kind == "words" and not word_list(self.words, self.held_out, self.split):
            raise ValueError(f"text.words={self.words}: no words of letters in the {self.split} split")
        if self.kind == "text" and not text_files(self.files, self.held_out, self.split):
            raise ValueError(
                f"text.files={self.files}: no text file with printable words in the {self.split} split"
            )

    @classmethod
    def from_config(cls, cfg) -> TextSpec:
        d = dict(cfg)
        if "length" in d:
            d["length"] = tuple(int(v) for v in d["length"])
        if d.get("length_weights") is not None:
            d["length_weights"] = tuple(float(v) for v in d["length_weights"])
        return cls(**d)


def held_out(name: str, fraction: float) -> bool:
    """Whether `name` (a word, a font family's name) belongs to the held-out share `fraction`: a hash of the name,
    so that the split is the same on every machine and for every seed."""
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return h / 2**64 < fraction


def split_items(items, fraction: float, split: str, name=lambda it: Path(str(it)).name) -> list:
    """The items of `split` (train, held_out or all) by `held_out(name(item))`: by default each item's base name
    (a font's split takes its family: `data_pipeline.synthetic.font_family`)."""
    if split == "all":
        return list(items)
    want = split == "held_out"
    return [it for it in items if held_out(name(it), fraction) == want]


@lru_cache(maxsize=8)
def word_list(path: str, fraction: float = 0.0, split: str = "all") -> tuple[str, ...]:
    """Distinct words of letters (a-z, A-Z) in `path`, sorted, of the given split."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"text.words={path}: no such file (Debian's wamerican installs {WORD_LIST})")
    words = sorted({w for w in file.read_text(errors="replace").split() if re.fullmatch(r"[A-Za-z]+", w)})
    return tuple(split_items(words, fraction, split))


@lru_cache(maxsize=4)
def text_files(pattern: str, fraction: float = 0.0, split: str = "all") -> tuple[tuple[str, ...], ...]:
    """The words (white-space separated, printable ASCII, at most 24 characters) of each text file matching
    `pattern`, of the given split (by a hash of the file's path)."""
    docs = []
    for path in sorted(glob.glob(pattern, recursive=True)):
        if split != "all" and held_out(path, fraction) != (split == "held_out"):
            continue
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        words = tuple(w for w in text.split() if w.isascii() and w.isprintable() and len(w) <= 24)
        if words:
            docs.append(words)
    return tuple(docs)


def _mixed_token(rng: random.Random, alphabet: str) -> str:
    form = rng.randrange(6)
    if form == 0:
        return str(rng.randint(0, 10 ** rng.randint(1, 5)))
    if form == 1:
        return f"{rng.randint(0, 9999)}.{rng.randint(0, 99):02d}"
    if form == 2:
        return f"{rng.choice('$#')}{rng.randint(1, 999)}"
    if form == 3:
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
        return rng.choice("([\"'") + word + rng.choice(")]\"'.,;:!?")
    if form == 4:
        return "".join(rng.choice(alphabet + "0123456789") for _ in range(rng.randint(2, 6)))
    return "".join(rng.choice(PUNCTUATION) for _ in range(rng.randint(1, 3)))


def make_text(spec: TextSpec, rng: random.Random) -> str:
    """One snippet's text, drawn with `rng`."""
    low, high = spec.length
    n = (
        rng.choices(range(low, high + 1), spec.length_weights)[0]
        if spec.length_weights
        else rng.randint(low, high)
    )
    if spec.kind == "letters":
        return "".join(rng.choice(spec.alphabet) for _ in range(n))
    if spec.kind == "words":
        words = word_list(spec.words, spec.held_out, spec.split)
        return " ".join(rng.choice(words) for _ in range(n))
    if spec.kind == "text":
        doc = rng.choice(text_files(spec.files, spec.held_out, spec.split))
        start = rng.randrange(max(len(doc) - n + 1, 1))
        return " ".join(doc[start : start + n])
    return " ".join(_mixed_token(rng, spec.alphabet) for _ in range(n))


def make_texts(spec: TextSpec, count: int, seed: int) -> list[str]:
    """`count` texts, the same for the same spec and seed."""
    rng = random.Random(seed)
    return [make_text(spec, rng) for _ in range(count)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m data_pipeline.snippet_text", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--kind", choices=KINDS, default="letters")
    ap.add_argument("--count", type=int, required=True, help="snippets to write")
    ap.add_argument("--length", type=int, nargs=2, default=(1, 3), metavar=("LOW", "HIGH"))
    ap.add_argument("--alphabet", default=LOWERCASE)
    ap.add_argument("--words", default=WORD_LIST, help="word list for --kind words")
    ap.add_argument("--files", default=TEXT_FILES, help="glob of text files for --kind text")
    ap.add_argument("--held-out", type=float, default=0.1, help="share of words (text files) set aside")
    ap.add_argument("--split", choices=SPLITS, default="train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="text file to write, one snippet per line")
    args = ap.parse_args(argv)
    try:
        spec = TextSpec(
            args.kind, tuple(args.length), args.alphabet, args.words, args.files, args.held_out, args.split
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(t + "\n" for t in make_texts(spec, args.count, args.seed)))
    print(f"wrote {args.count} {args.kind} snippets to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
