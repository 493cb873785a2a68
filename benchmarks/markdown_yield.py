"""How much of each real markdown file `source=readme` keeps: the words a reader sees, found in kept labels.

    python -m benchmarks.markdown_yield --input <dir|glob|list> [--every 1] [--max-docs N] [--worst 15]

Builds `source=readme` over the files (one document a shard) and, for each file, takes the words a reader
sees (pandoc's plain-text rendering of the markdown, image alt texts left out) and measures the share of
them (as a multiset) that the labels of the file's kept tiles hold. Prints the mean share, how many files
keep at least 90%, the skip and error counts of the build, and the files that keep least with the reasons
their tiles were dropped. Markdown files are folders' `README.md` or any `.md` / `.markdown` (gzipped
ones too, as Debian installs them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks.common import run_build
from data_pipeline.align import markdown_words, token_recall, words
from data_pipeline.documents import list_inputs

EXTENSIONS = (".md", ".markdown", ".gz")


# A pandoc filter that drops images, inline and by reference alike: an image shows a picture, not its alt text.
NO_IMAGES = "function Image(el) return {} end\n"


def reader_words(markdown: str, tmp: Path) -> list[str]:
    """The words of pandoc's plain-text rendering of the markdown, images left out."""
    lua = tmp / "no-images.lua"
    if not lua.exists():
        lua.write_text(NO_IMAGES)
    plain = subprocess.run(
        ["pandoc", "-f", "gfm", "-t", "plain", "--wrap=none", f"--lua-filter={lua}"],
        input=markdown,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return words(plain)


def read_markdown(path: Path) -> str:
    raw = path.read_bytes()
    return (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8", "replace")


def prepare(spec: str, tmp: Path, every: int, max_docs: int | None) -> list[Path]:
    """The markdown files of `spec`, gunzipped into `tmp` (the builder reads `.md`), one folder each."""
    files = [Path(d.path) for d in list_inputs(spec, EXTENSIONS)]
    files = [f for f in files if f.suffix != ".gz" or f.name.lower().endswith((".md.gz", ".markdown.gz"))]
    files = files[::every][:max_docs]
    out = []
    for i, f in enumerate(files):
        dest = tmp / "in" / f"{i:05d}" / "README.md"
        dest.parent.mkdir(parents=True)
        dest.write_text(read_markdown(f), encoding="utf-8")
        out.append((f, dest))
    (tmp / "origins.json").write_text(json.dumps({str(d): str(f) for f, d in out}))
    return [d for _, d in out]


def measure(inputs: list[Path], tmp: Path, workers: int, extra: list[str]) -> dict:
    import webdataset as wds

    out = tmp / "out"
    run_build(
        "readme",
        tmp / "in",
        out,
        f"workers={workers}",
        "docs_per_shard=1",
        "filters.languages=all",
        *extra,
    )
    labels: dict[str, list[str]] = {}
    stats: dict[str, dict] = {}
    docs = list_inputs(str(tmp / "in"), (".md",))  # shard i is document i
    for i, doc in enumerate(docs):
        s = json.loads((out / f"shard-{i:05d}.json").read_text())
        stats[doc.path] = s
        for sample in wds.WebDataset(str(out / s["shard"]), shardshuffle=False, empty_check=False):
            labels.setdefault(doc.path, []).append(sample["md"].decode())
    per_file = {}
    for doc in docs:
        reference = reader_words(Path(doc.path).read_text(encoding="utf-8"), tmp)
        got = markdown_words("\n".join(labels.get(doc.path, [])))
        per_file[doc.path] = (token_recall(reference, got), len(reference))
    return {"per_file": per_file, "stats": stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, help="markdown files: a folder, a glob or a list file")
    ap.add_argument("--every", type=int, default=1, help="take every n-th file (sorted)")
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worst", type=int, default=15, help="list this many files that keep least")
    ap.add_argument("overrides", nargs="*", help="build overrides, e.g. browser.max_height=30000")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = prepare(args.input, tmp, args.every, args.max_docs)
        result = measure(inputs, tmp, args.workers, args.overrides)
        origins = json.loads((tmp / "origins.json").read_text())
    per_file, stats = result["per_file"], result["stats"]
    recalls = [r for r, _ in per_file.values()]
    skips, errors = Counter(), Counter()
    for s in stats.values():
        skips.update(s["skips"])
        errors.update(s["errors"])
    print(
        f"{len(recalls)} files: kept labels hold {statistics.mean(recalls):.1%} of the words a reader sees on "
        f"average (median {statistics.median(recalls):.1%}); {sum(r >= 0.9 for r in recalls)}/{len(recalls)} "
        f"files keep >= 90% ({sum(r >= 0.9 for r in recalls) / len(recalls):.1%})"
    )
    print(f"samples {sum(s['samples'] for s in stats.values())}; skips {dict(skips)}; errors {dict(errors)}")
    for path, (recall, n) in sorted(per_file.items(), key=lambda kv: kv[1][0])[: args.worst]:
        s = stats[path]
        print(f"  {recall:6.1%} of {n:5d} words  {origins[path]}  skips {s['skips']} errors {s['errors']}")


if __name__ == "__main__":
    main()
