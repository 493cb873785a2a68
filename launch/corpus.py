"""The paper's corpus priced, per source of the mixture: pages, core-hours to build it here at the rates the
benchmarks measured, days on a cluster, bytes of shards, and which sources an importer serves from where they
already live.

    python -m launch.corpus [cores=1024] [sources.scans.pages=27600000] [importer_pages_per_s=150] [key=value ...]

Keys and defaults are in `configs/tools/corpus.yaml`. Every figure says where it comes from: a rate measured by
a benchmark here (named), or `not measured` (no core-hours then); pages are the mixture's share of the corpus
unless a source's `pages` is given.
"""

from __future__ import annotations

import sys

from configs.compose import tool_main


def price(cfg) -> list[dict]:
    """One row per source: pages, rate, core-hours (built and, where an importer serves it, imported), bytes."""
    rows = []
    for name, s in cfg.sources.items():
        pages = float(s.pages) if s.pages is not None else float(s.share) * float(cfg.total_pages)
        rate = float(s.pages_per_s) if s.pages_per_s is not None else None
        importer_rate = None
        if s.importer in (
            "idl_wds",
            "pdfa_wds",
        ):  # rendering only: source=pdf's rate times the measured ratio
            importer_rate = cfg.importer_pages_per_s or (
                float(cfg.sources.general_pdf.pages_per_s) * float(cfg.importer_vs_pdf)
            )
        rows.append(
            {
                "source": name,
                "pages": pages,
                "builder": s.builder,
                "importer": s.importer,
                "pages_per_s": rate,
                "core_hours": pages / rate / 3600 if rate else None,
                "import_core_hours": pages / float(importer_rate) / 3600 if importer_rate else None,
                "bytes": pages * float(cfg.bytes_per_page),
                "measured": s.measured,
            }
        )
    return rows


def table(cfg) -> str:
    rows = price(cfg)
    cores = int(cfg.cores)

    def hours(h):
        return f"{h:12,.0f}" if h is not None else f"{'not measured':>12s}"

    lines = [
        f"{'source':14s} {'pages':>8s} {'builder':>11s} {'core-hours':>12s} {'importer':>18s} {'imported':>12s} "
        f"{'shards':>8s}  rate from"
    ]
    for r in rows:
        lines.append(
            f"{r['source']:14s} {r['pages'] / 1e6:7.1f}M {r['builder'] or '-':>11s} {hours(r['core_hours'])} "
            f"{r['importer'] or '-':>18s} {hours(r['import_core_hours']) if r['import_core_hours'] else f'{chr(45):>12s}'} "
            f"{r['bytes'] / 1e12:6.1f} TB  {r['measured'] or 'not measured'}"
        )
    known = [r for r in rows if r["core_hours"] is not None]
    best = sum(r["import_core_hours"] or r["core_hours"] for r in known)
    built = sum(r["core_hours"] for r in known)
    pages = sum(r["pages"] for r in rows)
    lines.append(
        f"total {pages / 1e6:.1f}M pages, {sum(r['bytes'] for r in rows) / 1e12:.0f} TB of shards; the "
        f"{len(known)} sources with a measured rate ({sum(r['pages'] for r in known) / 1e6:.1f}M pages): "
        f"{built:,.0f} core-hours built ({built / cores / 24:.1f} days on {cores} cores), {best:,.0f} with the "
        f"importers where they serve ({best / cores / 24:.1f} days); {len(rows) - len(known)} sources not measured"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return tool_main(argv, __doc__, "corpus", table)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
