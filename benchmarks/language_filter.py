"""The language filter on real PDFs: English documents kept, documents in other languages dropped.

    python -m benchmarks.language_filter [--english <dir|glob|list>] [--other <dir|glob|list>] [--every 1]

Builds each set with `source=pdf filters.languages=[en]` (one document a shard, so each shard's stats are
one document's) and compares what the filter dropped with page-by-page identification of the same pages by
a witness of another family than the filter's fastText model (`py3langid`: naive Bayes over byte n-grams, on
PyMuPDF's plain text of the page): a document is "mostly English" when more than half of its text pages are
identified as English. `kept_in_other_languages` names the kept samples the witness reads as another language. Prints, for each set, the share of pages of
mostly-English documents dropped as `language` (target <= 1%) and of pages of other documents (target: the
non-English set >= 95%), with the documents that disagree named; and the same figures for the rule the
builder used before (a document decided by its first page of 1000 or more characters) on the same pages.

Defaults: `--english` the PDFs of Debian's texlive documentation packages, `--other` the translated
manuals Debian ships as PDFs (debian-reference, developers-reference, maint-guide in de/es/fr/it).
"""

from __future__ import annotations

import argparse
import glob
import json
import tempfile
from pathlib import Path

import pymupdf

from benchmarks.common import run_build
from data_pipeline.documents import list_inputs
from data_pipeline.filters import LANG_ID_CHARS, detect_language

ENGLISH = "/usr/share/doc/texlive-doc/**/*.pdf"
OTHER = (
    "/usr/share/debian-reference/debian-reference.*.pdf",
    "/usr/share/developers-reference/*/developers-reference.pdf",
    "/usr/share/doc/maint-guide-*/maint-guide.*.pdf",
)
MIN_CHARS = 10  # filters.min_chars: pages with less text never reach the language filter


def witness_language(text: str) -> str:
    """The language `py3langid` reads in `text` (its own model; nothing shared with the filter's)."""
    import py3langid

    return py3langid.classify(text)[0]


def kept_in_other_languages(shards: Path, keep: str = "en") -> list[str]:
    """Keys of a build's layout samples whose text the witness reads as another language than `keep`."""
    return [key for key, _, _ in read_as_other(shards, keep)]


def read_as_other(shards: Path, keep: str = "en") -> list[tuple[str, str, str]]:
    """(key, the witness's language, the text) of each kept sample the witness reads as another language."""
    from data_pipeline.manifest import read_manifest
    from data_pipeline.schema import decode_sample, text_member
    from data_pipeline.storage import iter_samples

    manifest, found = read_manifest(shards), []
    for i in range(len(manifest)):
        for members in iter_samples(manifest.url(i), wanted=text_member):
            text = decode_sample(members).text()
            if (lang := witness_language(text)) != keep:
                found.append((members["__key__"], lang, text))
    return found


def page_reference(path: str) -> tuple[int, int, int | None]:
    """(text pages, of which identified English page by page, how many pages the old rule would drop)."""
    text_pages = english = 0
    decided: tuple[str, float] | None = None
    old_drops = 0
    with pymupdf.open(path) as doc:
        for page in doc:
            text = page.get_text()
            words = text.split()
            if sum(map(len, words)) < MIN_CHARS:
                continue
            text_pages += 1
            english += witness_language(text) == "en"
            lang, score = detect_language(text)
            # The previous rule: the first page of LANG_ID_CHARS or more characters decides the document.
            verdict = decided or (lang, score)
            if decided is None and sum(map(len, words)) + len(words) - 1 >= LANG_ID_CHARS:
                decided = (lang, score)
            old_drops += not (verdict[0] == "en" and verdict[1] >= 0.5)
    return text_pages, english, old_drops


def measure(name: str, paths: list[str], tmp: Path, workers: int, show: int = 0) -> None:
    listing = tmp / f"{name}.txt"
    listing.write_text("\n".join(paths))
    out = tmp / name
    run_build("pdf", listing, out, f"workers={workers}", "docs_per_shard=1", "filters.languages=[en]")
    docs = list_inputs(str(listing), (".pdf",))  # shard i is document i of the sorted list
    groups = {True: [0, 0, 0, 0], False: [0, 0, 0, 0]}  # mostly English: [pages, dropped, old dropped, docs]
    disagree = []
    for i, doc in enumerate(docs):
        stats_file = out / f"shard-{i:05d}.json"
        if not stats_file.exists():
            print(f"  {doc.path}: no shard (failed task)")
            continue
        stats = json.loads(stats_file.read_text())
        dropped = stats["skips"].get("language", 0)
        considered = stats["samples"] + dropped  # pages that reached the language filter
        text_pages, english, old_drops = page_reference(doc.path)
        if not considered:
            continue
        mostly = english > text_pages / 2
        g = groups[mostly]
        g[0] += considered
        g[1] += dropped
        g[2] += min(old_drops, considered)
        g[3] += 1
        if (mostly and dropped) or (not mostly and dropped < considered):
            disagree.append(
                f"  {Path(doc.path).name}: {english}/{text_pages} pages English page by page; "
                f"dropped {dropped}/{considered}"
            )
    for mostly, label in ((True, "mostly-English documents"), (False, "other documents")):
        pages, dropped, old, n = groups[mostly]
        if n:
            print(
                f"{name}: {label}: {n}, {pages} pages; dropped as language {dropped} ({dropped / pages:.2%}); "
                f"first-long-page rule on the same pages: {old} ({old / pages:.2%})"
            )
    kept = sum(json.loads((out / f"shard-{i:05d}.json").read_text())["samples"] for i in range(len(docs))
               if (out / f"shard-{i:05d}.json").exists())  # fmt: skip
    other = read_as_other(out) if kept else []
    print(f"{name}: kept pages the witness reads as another language than English: {len(other)} of {kept} "
          f"({len(other) / max(kept, 1):.2%}); an even sample of them to read:")  # fmt: skip
    for key, lang, text in other[:: max(len(other) // show, 1)][:show] if show else []:
        print(f"  {key} [{lang}]: {' '.join(text.split())[:160]}")
    for line in disagree:
        print(line)


def _paths(spec: str | tuple[str, ...], every: int) -> list[str]:
    """PDFs of a folder, list file or glob (or several globs), sorted, every `every`-th."""
    if isinstance(spec, str) and Path(spec).exists():
        return [d.path for d in list_inputs(spec, (".pdf",))][::every]
    specs = (spec,) if isinstance(spec, str) else spec
    return sorted({p for s in specs for p in glob.glob(s, recursive=True)})[::every]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--english", default=ENGLISH, help="mostly English PDFs (dir, glob or list file)")
    ap.add_argument("--other", default=OTHER, help="PDFs in other languages (dir, glob or list file)")
    ap.add_argument("--every", type=int, default=1, help="take every n-th PDF of each set (sorted)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--show", type=int, default=0, help="print this many kept pages the witness reads otherwise"
    )
    args = ap.parse_args()
    pymupdf.TOOLS.mupdf_display_errors(False)  # broken content streams of real PDFs: not our output
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in (("english", args.english), ("other", args.other)):
            paths = _paths(spec, args.every)
            if not paths:
                print(
                    f"{name}: no PDFs found ({spec}); Debian packages texlive-latex-base-doc, debian-reference-de, ..."
                )
                continue
            measure(name, paths, Path(tmp), args.workers, args.show)


if __name__ == "__main__":
    main()
