"""An independent witness of the labels: Tesseract reads each sample's image, and its words are compared with
the words of the sample's markdown label.

    python -m benchmarks.label_witness --source readme --input <dir|glob|list> [--every 1] [--max-docs N]
    python -m benchmarks.label_witness --shards <build output folder> [...]

The builders' own consistency check compares a label with the text the renderer says it drew; a defect that
both share (hidden text labelled and counted as visible, text drawn where the renderer does not look) passes
it. An OCR engine sees only pixels. For every sample with a markdown label (`readme`, `html`, `docx`,
`arxiv`): the image, upscaled 2x, goes through Tesseract (English samples: Tesseract reads English here); words are
lower-cased runs of two or more letters and digits with a letter (single characters and bare numbers are
what OCR drops or invents most).
Label and OCR words are matched as multisets, exactly, then pairs of leftovers that differ by a misread
(normalised edit similarity >= 0.75, words of 4 or more characters), then a leftover split or joined by OCR.
*Phantom*: label words the image does not show (share of label words). *Missed*: words the image shows
that the label lacks (share of the words OCR reads with confidence >= 60), OCR words inside the pictures
a sample's `meta.json` lists
(images and graphics, whose text is no text of the page) left out. An image whose reading leaves over 10% of
its label unread is read again with local binarization (text on a coloured box), the closer reading kept.
Prints both per source, in total and
per sample, the samples worst on each with their words, and the share of image area marked as pictures.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import subprocess
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from benchmarks.common import run_build
from data_pipeline.align import markdown_words
from data_pipeline.schema import decode_sample

WORD = re.compile(r"[^\W_]+")  # underscores split words: OCR often reads them as spaces
UPSCALE = 2
# A word counts as missed only when Tesseract is this sure of it (box drawings and noise read as letters
# at low confidence); any reading clears a label word.
MIN_CONFIDENCE = 60
# Over this share of a label's words unread, the image is read again with local binarization (a page's
# coloured box reads as nothing with one global threshold) and the reading that disagrees less is kept.
RETRY_SHARE = 0.1


def ocr_words(
    png: bytes, pictures: list[list[int]], local: bool = False
) -> tuple[list[str], list[str], float]:
    """Words Tesseract reads in the image (all, and those read with confidence >= MIN_CONFIDENCE), those
    whose centre lies in a picture left out; and the share of the image's area the pictures cover. `local`:
    binarize by local contrast (Sauvola) instead of one threshold for the image, which turns text on a
    coloured box into a black block."""
    image = Image.open(io.BytesIO(png)).convert("L")
    big = image.resize((image.width * UPSCALE, image.height * UPSCALE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    big.save(buf, format="PPM")
    r = subprocess.run(
        [
            "tesseract",
            "stdin",
            "stdout",
            "--psm",
            "3",
            *(["-c", "thresholding_method=2"] if local else []),
            "tsv",
        ],
        input=buf.getvalue(),
        capture_output=True,
        env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    read, sure = [], []
    for row in r.stdout.decode("utf-8", "replace").splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) != 12 or cols[0] != "5" or not cols[11].strip():
            continue
        x, y, w, h = (int(v) / UPSCALE for v in cols[6:10])
        cx, cy = x + w / 2, y + h / 2
        if any(p[0] <= cx <= p[2] and p[1] <= cy <= p[3] for p in pictures):
            continue
        tokens = words_of(cols[11])
        read += tokens
        if float(cols[10]) >= MIN_CONFIDENCE:
            sure += tokens
    area = sum((p[2] - p[0]) * (p[3] - p[1]) for p in pictures) / max(image.width * image.height, 1)
    return read, sure, min(area, 1.0)


def words_of(text: str) -> list[str]:
    """Lower-cased words of two or more characters with a letter: single characters and bare numbers are
    what OCR drops or invents most (list numbers at the margin, digits in code), so neither side counts them."""
    return [t.lower() for t in WORD.findall(text) if len(t) >= 2 and not t.isdigit()]


def _joins(words: list[str]) -> dict[str, list[str]]:
    """Each concatenation of 2-4 consecutive words, with the words."""
    return {"".join(words[i : i + k]): words[i : i + k] for k in (2, 3, 4) for i in range(len(words) - k + 1)}


def match(label: list[str], seen: list[str]) -> tuple[Counter, Counter]:
    """(phantom, missed): the label's words the OCR did not read, and the OCR's words the label lacks, after
    exact matches, words OCR joined or split (consecutive words), and misreads."""
    from rapidfuzz.distance import Levenshtein

    lab, ocr = Counter(label), Counter(seen)
    common = lab & ocr
    lab, ocr = lab - common, ocr - common
    for left, other, sequence in ((ocr, lab, label), (lab, ocr, seen)):  # joined by OCR, then split by it
        joins = _joins(sequence)
        for word in list(left.elements()):
            parts = joins.get(word)
            if parts and left[word]:
                left[word] -= 1
                for part in parts:
                    if other[part]:
                        other[part] -= 1
    for word in sorted(lab.elements(), key=len, reverse=True):  # misreads of words of 4+ characters
        if len(word) < 4 or not lab[word]:
            continue
        best = max(
            (o for o in ocr if ocr[o] and len(o) >= 3),
            key=lambda o, w=word: Levenshtein.normalized_similarity(w, o),
            default=None,
        )
        if best is not None and Levenshtein.normalized_similarity(word, best) >= 0.75:
            lab[word] -= 1
            ocr[best] -= 1
    return +lab, +ocr


def witness(sample: dict) -> dict:
    label = words_of(" ".join(markdown_words(sample["md"])))
    seen, sure, pictures = ocr_words(sample["png"], sample["pictures"])
    phantom, _ = match(label, seen)
    _, missed = match(label, sure)
    if sum(phantom.values()) > RETRY_SHARE * len(label):  # Tesseract lost a region: read it by local contrast
        seen2, sure2, _ = ocr_words(sample["png"], sample["pictures"], local=True)
        phantom2, _ = match(label, seen2)
        _, missed2 = match(label, sure2)
        if sum(phantom2.values()) + sum(missed2.values()) < sum(phantom.values()) + sum(missed.values()):
            phantom, missed, sure = phantom2, missed2, sure2
    return {
        "key": sample["key"],
        "source": sample["source"],
        "label": len(label),
        "ocr": len(sure),
        "phantom": dict(phantom),
        "missed": dict(missed),
        "pictures": pictures,
    }


def read_samples(out: Path, lang: str | None, skipped: Counter) -> list[dict]:
    """Samples with a markdown label (in language `lang`, when given: Tesseract reads English here)."""
    import webdataset as wds

    samples = []
    for tar in sorted(out.rglob("shard-*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False):
            if "md" not in s:
                continue
            meta = json.loads(s["meta.json"])
            if lang and meta.get("lang") != lang:
                skipped[meta.get("lang")] += 1
                continue
            image = s[decode_sample(s).image_key]
            samples.append(
                {
                    "key": s["__key__"],
                    "source": meta["source"],
                    "md": s["md"].decode(),
                    "png": image,
                    "pictures": meta.get("pictures", []),
                }
            )
    return samples


def build(source: str, spec: str, out: Path, every: int, max_docs: int | None, overrides: list[str]) -> None:
    from data_pipeline.documents import list_inputs
    from data_pipeline.sources import get_source

    docs = [d.path for d in list_inputs(spec, tuple(get_source(source).EXTENSIONS))][::every][:max_docs]
    listing = out.parent / f"{source}-inputs.txt"
    listing.write_text("\n".join(docs))
    run_build(source, listing, out, "filters.languages=all", *overrides)


def report(results: list[dict], worst: int) -> None:
    by_source: dict[str, list[dict]] = {}
    for r in results:
        by_source.setdefault(r["source"], []).append(r)
    for source, rs in sorted(by_source.items()):
        label = sum(r["label"] for r in rs)
        ocr = sum(r["ocr"] for r in rs)
        phantom = sum(sum(r["phantom"].values()) for r in rs)
        missed = sum(sum(r["missed"].values()) for r in rs)
        per_phantom = [sum(r["phantom"].values()) / max(r["label"], 1) for r in rs]
        per_missed = [sum(r["missed"].values()) / max(r["ocr"], 1) for r in rs]
        print(
            f"{source}: {len(rs)} samples, {label} label words, {ocr} OCR words; phantom {phantom / max(label, 1):.2%} "
            f"(per sample median {statistics.median(per_phantom):.2%}), missed {missed / max(ocr, 1):.2%} "
            f"(median {statistics.median(per_missed):.2%}); pictures cover "
            f"{statistics.mean(r['pictures'] for r in rs):.1%} of the image area on average"
        )
        for name, key in (("phantom", "phantom"), ("missed", "missed")):
            ranked = sorted(rs, key=lambda r, k=key: -sum(r[k].values()))[:worst]
            for r in ranked:
                n = sum(r[key].values())
                if n:
                    words = ", ".join(f"{w}x{c}" if c > 1 else w for w, c in Counter(r[key]).most_common(12))
                    print(f"  {name} {n:4d}  {r['key']}: {words}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", help="a build output folder (or a folder of several) to witness")
    ap.add_argument("--source", choices=["readme", "html", "docx", "arxiv"], help="build this source first")
    ap.add_argument("--input", help="the documents to build (dir, glob or list file)")
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--max-samples", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worst", type=int, default=8)
    ap.add_argument("--json", help="write every sample's result here")
    ap.add_argument("--lang", default="en", help="witness samples of this language only ('' for all)")
    ap.add_argument("overrides", nargs="*", help="build overrides")
    args = ap.parse_args()
    if not (args.shards or (args.source and args.input)):
        ap.error("give --shards, or --source and --input")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.shards) if args.shards else Path(tmp) / args.source
        if not args.shards:
            build(args.source, args.input, out, args.every, args.max_docs, args.overrides)
        skipped: Counter = Counter()
        samples = read_samples(out, args.lang or None, skipped)[: args.max_samples]
        if skipped:
            print(f"left out (language not {args.lang}): {dict(skipped)}")
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(witness, samples, chunksize=4))
    if args.json:
        Path(args.json).write_text(json.dumps(results))
    report(results, args.worst)


if __name__ == "__main__":
    main()
