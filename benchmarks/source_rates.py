"""One core's pages/s of the builders the corpus price table has no other benchmark for: PowerPoint decks, DOCX
reports, READMEs and arXiv papers (whose pages give both the layout and the markdown samples).

    python -m benchmarks.source_rates [--sources powerpoint,docx,readme,arxiv] [--docs 6] [--rounds 2]
                                      [--input readme=<dir|glob|list> ...]

Each source builds its documents with the function every executor runs (`data_pipeline.task.run_task`), in this
process with one worker's runner (sandbox, deadlines, the shared browser and converter), as `launch.corpus`'s
rates mean: one core, whole documents, image encoding and shard writing included. One document first starts
what the source keeps warm (its runner, Chromium, LibreOffice); then `--rounds` rounds over the documents,
the sources taking turns in each round (in alternating order) so a slow spell of the machine falls on all.
Documents are the demo corpus's (`data_pipeline.demo_corpus`, other seeds per document) unless `--input`
gives a source real ones. Prints pages and samples per second per source (medians over the rounds) and the
`pages_per_s` to put in `configs/tools/corpus.yaml`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import build_config
from data_pipeline import demo_corpus
from data_pipeline.documents import list_inputs
from data_pipeline.sources import get_source
from data_pipeline.task import Task, run_task

MAKERS = {name: demo_corpus.MAKERS[name] for name in ("powerpoint", "docx", "readme", "arxiv")}
# The price table's rows each source's rate serves (configs/tools/corpus.yaml).
ROWS = {"powerpoint": ["powerpoint"], "docx": ["docx_md"], "readme": ["readme_md"],
        "arxiv": ["arxiv_layout", "latex_md"]}  # fmt: skip


def documents(source: str, folder: Path, count: int, given: str | None) -> list:
    """The source's documents: those given (`--input`), or `count` demo documents made in `folder`."""
    if given is None:
        folder.mkdir(parents=True)
        for seed in range(count + 1):  # one more: the warm-up document
            MAKERS[source](folder, 500 + seed)
        given = str(folder)
    docs = list_inputs(given, get_source(source).EXTENSIONS)
    if len(docs) < 2:
        sys.exit(f"--input {source}={given}: {len(docs)} documents; the benchmark needs two or more")
    return docs[: count + 1]


def timed(source: str, docs: list, out: Path, index: int) -> tuple[float, int, int, dict]:
    """Seconds, pages and samples of one task over `docs`, and its errors."""
    cfg = build_config(source, out, dedup=False)
    start = time.perf_counter()
    stats = run_task(Task(index, tuple(docs)), cfg)
    return time.perf_counter() - start, stats["pages"], stats["samples"], stats["errors"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.source_rates", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--sources", default=",".join(MAKERS), help="comma-separated: " + ", ".join(MAKERS))
    ap.add_argument("--docs", type=int, default=6, help="documents per source and round (demo documents)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--input", action="append", default=[], metavar="SOURCE=PATH", help="real documents")
    args = ap.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]
    unknown = [s for s in sources if s not in MAKERS]
    given = dict(item.split("=", 1) for item in args.input)
    if unknown or set(given) - set(sources):
        print(f"error: sources are {', '.join(MAKERS)} (got {unknown or sorted(set(given) - set(sources))})",
              file=sys.stderr)  # fmt: skip
        return 2
    rates: dict[str, list[tuple[float, float]]] = {s: [] for s in sources}
    counts: dict[str, tuple[int, int, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        docs = {s: documents(s, root / "in" / s, args.docs, given.get(s)) for s in sources}
        for s in sources:  # warm-up: the runner, Chromium, LibreOffice
            timed(s, docs[s][:1], root / "warm" / s, 0)
        for r in range(args.rounds):
            for s in sources if r % 2 == 0 else reversed(sources):
                seconds, pages, samples, errors = timed(s, docs[s][1:], root / f"round{r}" / s, 0)
                rates[s].append((pages / seconds, samples / seconds))
                counts[s] = (pages, samples, errors)
                print(f"round {r} {s}: {pages} pages, {samples} samples in {seconds:.1f} s", file=sys.stderr)
    print(
        f"{'source':12s} {'docs':>5s} {'pages':>6s} {'samples':>8s} {'pages/s':>8s} {'samples/s':>10s}  errors"
    )
    for s in sources:
        pages, samples, errors = counts[s]
        page_rate = statistics.median(p for p, _ in rates[s])
        sample_rate = statistics.median(q for _, q in rates[s])
        print(f"{s:12s} {len(docs[s]) - 1:5d} {pages:6d} {samples:8d} {page_rate:8.2f} {sample_rate:10.2f}  "
              f"{errors or '-'}")  # fmt: skip
    print("\nconfigs/tools/corpus.yaml (pages_per_s: samples a core writes per second):")
    for s in sources:
        rate = statistics.median(q for _, q in rates[s])
        for row in ROWS[s]:
            print(f"  {row}: pages_per_s: {rate:.2f}  # benchmarks/source_rates.py ({s})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
