"""`source=arxiv` markdown on real LaTeX documents: how many pages get markdown, why the others do not, and
whether any kept label holds LaTeX the page does not show.

    python -m benchmarks.latex_markdown [--input <dir>] [--list pairs.txt] [--every 1] [--worst 10] [--keep <dir>]

Documents: PDFs with their LaTeX source beside them as `X.tex`, `X.tex.gz` or `X.ltx` (TeX Live's
documentation ships hundreds; default: those under /usr/share/doc/texlive-doc), kept when self-contained:
the file has `\\documentclass` and every file it `\\input`s, `\\include`s or `\\DocInput`s is in its folder. Builds them with
`source=arxiv` (one document a shard) and reports, over English pages (the sample's language), the share
that get markdown and the reasons for the rest (conversion failed; the document's class not installed, so
LaTeXML cannot expand its macros; markdown not matching the page: token IoU under `md_min_iou`, by band);
over kept labels, the pages whose label's prose holds a macro name (`\\name`) that the page's image does not
show (an independent witness: markdown-it's parse of the label and Tesseract's reading of the image, not the
builder's filter), with the lowest IoU kept.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import pymupdf

from benchmarks.common import run_build

DEFAULT_ROOT = "/usr/share/doc/texlive-doc"
SOURCE_NAMES = (".tex", ".tex.gz", ".ltx")
INPUTS = re.compile(r"\\(?:input|include|DocInput)\s*\{([^}]+)\}")
CLASS = re.compile(r"\\documentclass\s*(?:\[[^\]]*\])?\s*\{([^}]+)\}")
CONVERSION_FAILED = ("latex_conversion_failed", "no_main_tex", "bad_latex_source", "convert_timeout")
IOU_BANDS = [(0.9, 0.95), (0.8, 0.9), (0.5, 0.8), (0.0, 0.5)]


def latex_source(pdf: Path) -> Path | None:
    for suffix in SOURCE_NAMES:
        candidate = pdf.with_name(pdf.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def read_source(path: Path) -> str:
    raw = path.read_bytes()
    return (gzip.decompress(raw) if path.name.endswith(".gz") else raw).decode("utf-8", "replace")


def self_contained(source: Path) -> str | None:
    """None when the file is a whole document whose inputs are all beside it, else why not."""
    text = read_source(source)
    if "\\documentclass" not in text:
        return "no \\documentclass"
    for name in INPUTS.findall(text):
        name = name.strip()
        if "#" in name or "\\" in name:  # computed while typesetting (a macro's argument, \jobname)
            continue
        candidates = [source.parent / name, source.parent / f"{name}.tex"]
        if not any(c.exists() for c in candidates):
            return f"inputs {name} (not beside it)"
    return None


def class_installed(source: Path) -> bool:
    """Whether the document's class is installed here (else LaTeXML cannot read its macros)."""
    found = CLASS.search(read_source(source))
    if not found:
        return True
    name = found.group(1).strip()
    r = subprocess.run(["kpsewhich", f"{name}.cls"], capture_output=True, text=True)
    return bool(r.stdout.strip()) or name in ("article", "report", "book", "letter", "slides", "minimal")


# The witness of the labels' macro residue shares nothing with the builder's filter (`macros_not_shown`, which
# reads the PDF's text layer with its own regular expressions): the label's prose as markdown-it parses it
# (code spans, code blocks and $...$ math left out), and the page as Tesseract reads its image.
_BACKSLASH_WORD = re.compile(r"\\([A-Za-z@]{2,})")
_DOLLAR_MATH = re.compile(r"\$\$.+?\$\$|\$[^$]+\$", re.DOTALL)


def prose_macros(md: str) -> list[str]:
    """The `\\names` of the label's prose: markdown-it's text tokens, not code, not `$` math."""
    from markdown_it import MarkdownIt

    found = []
    for block in MarkdownIt("commonmark").enable("table").parse(md):
        for token in block.children or []:
            if token.type == "text":
                found += _BACKSLASH_WORD.findall(_DOLLAR_MATH.sub(" ", token.content))
    return found


def residue(md: str, png: bytes) -> list[str]:
    """Macro names of the label's prose that the page's image does not show: a name counts as shown when
    Tesseract reads a word holding it (with or without its backslash)."""
    from benchmarks.label_witness import ocr_words

    names = prose_macros(md)
    if not names:
        return []
    read, _, _ = ocr_words(png, [])
    seen = " ".join(read)
    return [f"\\{name}" for name in names if name.lower() not in seen]


def main() -> None:
    import webdataset as wds

    from data_pipeline.align import page_words

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=DEFAULT_ROOT, help="a folder searched for PDFs with their source")
    ap.add_argument("--list", help="a file of PDF paths (instead of --input)")
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worst", type=int, default=10)
    ap.add_argument(
        "--keep", help="build into this folder and keep it (for benchmarks.label_witness --shards)"
    )
    ap.add_argument("overrides", nargs="*", help="build overrides, e.g. source.md_min_iou=0.9")
    args = ap.parse_args()
    pymupdf.TOOLS.mupdf_display_errors(False)
    pdfs = (
        [Path(line.strip()) for line in Path(args.list).read_text().splitlines() if line.strip()]
        if args.list
        else sorted(Path(args.input).rglob("*.pdf"))
    )
    pairs, excluded = [], Counter()
    for pdf in pdfs:
        source = latex_source(pdf)
        if source is None:
            continue
        why = self_contained(source)
        if why:
            excluded[why.split(" (")[0]] += 1
        else:
            pairs.append(pdf)
    pairs = pairs[:: args.every]
    print(f"{len(pairs)} self-contained documents (excluded: {dict(excluded)})")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = Path(args.keep) if args.keep else tmp / "out"
        out.mkdir(parents=True, exist_ok=True)
        listing = out / "documents.txt"  # beside the shards: a rerun over a kept folder resumes it
        listing.write_text("\n".join(map(str, pairs)))
        run_build(
            "arxiv",
            listing,
            out,
            f"workers={args.workers}",
            "docs_per_shard=1",
            "filters.languages=all",
            *args.overrides,
        )
        from data_pipeline.documents import list_inputs

        docs = list_inputs(str(listing), (".pdf",))
        english = with_md = 0
        reasons: Counter = Counter()
        bad_labels, ious = [], []
        for i, doc in enumerate(docs):
            stats = json.loads((out / f"shard-{i:05d}.json").read_text())
            failed = [k for k in stats["skips"] if k in CONVERSION_FAILED]
            texts = {}
            with pymupdf.open(doc.path) as pdf:
                texts = {n: page.get_text() for n, page in enumerate(pdf)}
            doc_pages = doc_md = 0
            installed = class_installed(latex_source(Path(doc.path)))
            converter = "-"
            for s in wds.WebDataset(str(out / stats["shard"]), shardshuffle=False, empty_check=False):
                meta = json.loads(s["meta.json"])
                converter = meta.get("md_converter", converter)
                if meta.get("lang") != "en":
                    continue
                english += 1
                doc_pages += 1
                doc_md += "md" in s
                if "md" not in s:
                    if failed:
                        reasons[failed[0]] += 1
                    elif not installed:
                        reasons["class not installed here (its macros cannot expand)"] += 1
                    elif "md_unshown" in meta:  # aligned, but naming a macro the page does not show
                        reasons["md_macro_not_shown"] += 1
                    else:
                        iou = meta.get("md_token_iou", 0.0)
                        # (rounded to 3 places in meta.json: 0.9496 reads 0.95 and is in the top band)
                        lo, hi = next((b for b in IOU_BANDS if b[0] <= iou < b[1]), IOU_BANDS[0])
                        band = f"token IoU {lo:.2f}-{hi:.2f}"
                        reasons[band] += 1
                        if len(page_words(texts[meta["page"]])) < 50:
                            reasons["  of which pages with under 50 words"] += 1
                    continue
                with_md += 1
                ious.append(meta["md_token_iou"])
                left = residue(s["md"].decode(), s["png"])
                if left:
                    bad_labels.append((len(left), s["__key__"], Counter(left).most_common(6)))
            dropped = stats["skips"].get("latex_macros_dropped", 0)
            print(
                f"  {Path(doc.path).name}: {doc_md}/{doc_pages} English pages with markdown ({converter}"
                f"{', macros dropped' if dropped else ''}{', ' + failed[0] if failed else ''})"
            )
    print(
        f"English pages: {english}; with markdown: {with_md} ({with_md / max(english, 1):.1%}); "
        f"the rest by reason: {dict(reasons)}"
    )
    if ious:
        print(f"kept labels: lowest token IoU {min(ious):.3f}, mean {sum(ious) / len(ious):.3f}")
    print(f"kept labels holding a macro name the page does not show: {len(bad_labels)}")
    for n, key, names in sorted(bad_labels, reverse=True)[: args.worst]:
        print(f"  {n:3d}  {key}: {names}")


if __name__ == "__main__":
    main()
