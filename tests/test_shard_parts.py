"""Pieces of the shard contract: line cleaning, a sample's members and back, the tar writer's bytes, and the
per-sample filter."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from data_pipeline import filters
from data_pipeline.filters import (
    MIN_PROSE_CHARS,
    DocumentLanguage,
    SampleFilter,
    detect_language,
    page_language,
    prose_text,
)
from data_pipeline.schema import DrawnSample, Sample, clean_lines, decode_sample, encode_sample
from data_pipeline.writer import ShardWriter, _header


def test_clean_lines_clamps_orders_widens_and_drops_empty_text():
    lines = [
        {"text": "  two   words ", "bbox": [10.004, 5, 20.5, 15]},
        {"text": " \n\t", "bbox": [1, 1, 5, 5]},  # no text: dropped
        {"text": "inverted", "bbox": [30, 18, 20, 8]},  # corners swapped: put in order
        {"text": "outside", "bbox": [-5, -5, 200, 200]},  # clamped to the 100 x 50 image
        {"text": "\u200c", "bbox": [40, 10, 40, 20]},  # zero width: widened to one pixel
        {"text": "edge", "bbox": [100, 50, 100, 50]},  # a point on the far corner: the last pixel
        {"text": "nowhere", "bbox": [1, float("nan"), 5, float("inf")]},  # non-finite: dropped
    ]
    assert clean_lines(lines, 100, 50) == [
        {"text": "two words", "bbox": [10.0, 5.0, 20.5, 15.0]},
        {"text": "inverted", "bbox": [20.0, 8.0, 30.0, 18.0]},
        {"text": "outside", "bbox": [0.0, 0.0, 100.0, 50.0]},
        {"text": "\u200c", "bbox": [40.0, 10.0, 41.0, 20.0]},
        {"text": "edge", "bbox": [99.0, 49.0, 100.0, 50.0]},
    ]
    assert clean_lines([{"text": "", "bbox": [0, 0, 1, 1]}], 10, 10) == []


def test_decode_sample_reads_back_what_encode_sample_wrote():
    """Every label, the image (grey stays grey), and meta come back; a bad member raises only where it is read,
    so a reader that wants the markdown is not stopped by a broken layout."""
    image = np.full((40, 60), 200, np.uint8)
    lines = [{"text": "a line", "bbox": [1.0, 2.0, 30.0, 12.0]}]
    page = Sample("pdf", "doc", 3, image, "/in/doc.pdf", lines=lines, md="# a line", meta={"lang": "en"})
    members = encode_sample(page)
    back = decode_sample(members)
    assert back.key == "pdf/doc/00003" and back.image_key == "png"
    assert back.lines == lines and back.layout["width"] == 60 and back.md == "# a line"
    assert back.meta["origin"] == "/in/doc.pdf" and back.prompt is None and back.answers is None
    assert np.array_equal(np.asarray(back.image()), image)
    assert back.text() == "a line" and back.texts() == ["a line", "# a line"]

    tuned = decode_sample(
        encode_sample(Sample("t", "d", 0, image, "o", prompt="Q?", target="A", answers=["A", "a"]))
    )
    assert (tuned.prompt, tuned.target, tuned.answers, tuned.text()) == ("Q?", "A", ["A", "a"], "Q?\nA")
    assert decode_sample({"__key__": "k", "md": b"x"}).answers is None

    broken = decode_sample({**members, "layout.json": b"{not json", "md": b"\xff ok"}, errors="replace")
    assert broken.md == "\ufffd ok"
    with pytest.raises(ValueError):
        _ = broken.layout
    assert (
        decode_sample({"__key__": "cut"}).image_key is None
        and decode_sample({"__key__": "cut"}).image() is None
    )


def test_a_drawn_sample_reads_as_its_stored_members_would():
    """`DrawnSample` (a sample trained on as it is drawn) gives what `decode_sample(encode_sample(...))` gives: the
    same label members, and an image of the same mode and pixels: grey stays grey, RGBA becomes RGB, a page over
    `max_side` is resized with its boxes."""
    rng = np.random.default_rng(0)
    lines = [{"text": " a  line ", "bbox": [1.4, 2.0, 330.0, 12.0]}, {"text": "", "bbox": [0, 0, 4, 4]}]
    pages = [
        Sample("s", "grey", 0, rng.integers(0, 255, (40, 60), np.uint8), "o", lines=lines, md="# md"),
        Sample("s", "rgb", 1, Image.fromarray(rng.integers(0, 255, (30, 70, 3), np.uint8)), "o", lines=lines),
        Sample(
            "s", "rgba", 2, Image.fromarray(rng.integers(0, 255, (30, 70, 4), np.uint8)), "o", lines=lines
        ),
        Sample("s", "big", 3, rng.integers(0, 255, (90, 400, 3), np.uint8), "o", lines=lines),
        Sample("t", "tuned", 4, rng.integers(0, 255, (20, 20), np.uint8), "o", prompt="Q?", target="A"),
    ]
    for page in pages:
        stored, drawn = decode_sample(encode_sample(page, max_side=256)), DrawnSample(page, max_side=256)
        assert {k: v for k, v in stored.members.items() if k != "png"} == drawn.members
        assert (drawn.key, drawn.image_key, drawn.lines, drawn.md, drawn.prompt, drawn.answers) == (
            stored.key,
            stored.image_key,
            stored.lines,
            stored.md,
            stored.prompt,
            stored.answers,
        )
        a, b = stored.image(), drawn.image()
        assert (a.mode, a.size) == (b.mode, b.size) and np.array_equal(np.asarray(a), np.asarray(b)), (
            page.doc_id
        )
    assert DrawnSample(pages[3], max_side=256).layout["width"] == 256
    assert DrawnSample(pages[0]).image().mode == "L" and DrawnSample(pages[2]).image().mode == "RGB"


def test_shard_writer_writes_the_bytes_tarfile_writes(tmp_path):
    rng = np.random.default_rng(0)
    samples = [
        {
            "__key__": f"pdf/{'d' * (300 if i == 2 else 8)}{i}/{i:05d}",  # one name needs a PAX header
            "png": rng.bytes(1000 + 70_000 * (i == 1)),  # one member over the single-write size
            "layout.json": b"{}" * i,
            "meta.json": "é".encode() * i,
        }
        for i in range(4)
    ]
    with ShardWriter(tmp_path, 0) as writer:
        for sample in samples:
            writer.write(sample)
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            for ext in sorted(k for k in sample if not k.startswith("_")):
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size, info.mode, info.mtime = len(sample[ext]), 0o444, 0
                info.uname = info.gname = "bigdata"
                tar.addfile(info, io.BytesIO(sample[ext]))
    assert (tmp_path / "shard-00000.tar").read_bytes() == reference.getvalue()
    with tarfile.open(tmp_path / "shard-00000.tar") as tar:
        assert tar.getnames()[6] == samples[2]["__key__"] + ".layout.json"


@pytest.mark.parametrize("name", ["pdf/a/00000.png", "x" * 100, "x" * 101, "pdf/é/00000.md", "a.b/c d.json"])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 123_456_789, 8**11 - 1, 8**11])
def test_member_headers_are_tarfiles(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0
    info.uname = info.gname = "bigdata"
    assert _header(name, size) == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _filter(**overrides):
    cfg = {
        "min_chars": 10,
        "blank_std": 2.0,
        "max_garbled": 0.1,
        "languages": ["en"],
        "lang_threshold": 0.5,
        **overrides,
    }
    return SampleFilter(OmegaConf.create(cfg))


def _page(doc: str, page: int, text: str) -> Sample:
    image = np.full((64, 64), 255, np.uint8)
    image[8:16, 8:56] = 0
    return Sample("pdf", doc, page, image, "x.pdf", lines=[{"text": text, "bbox": [8, 8, 56, 16]}])


ENGLISH = "The quick brown fox jumps over the lazy dog while the committee reads its report. " * 14
FRENCH = "Ceci est une page écrite en français, avec des phrases complètes et assez longues. " * 3
# A table of contents like the first page of many manuals: dot leaders and numbers pull fastText off
# English (0.42 on LaTeX's usrguide), so deciding a document by such a page dropped whole English manuals.
TITLES = [
    "Introduction", "Creating document commands and environments", "Describing argument types",
    "Modifying argument descriptions", "Optional arguments", "Spacing and optional arguments",
    "Testing special values", "Argument processors", "Body of an environment", "Fully expandable commands",
    "Details about argument delimiters", "Creating new argument processors", "Access to the argument",
    "Case changing", "Preserving the case of names",
]  # fmt: skip
CONTENTS = "The manual for authors Contents " + " ".join(
    f"{i // 4 + 1}.{i % 4 + 1} {title} " + ". " * 24 + str(i + 2) for i, title in enumerate(TITLES)
)


def test_page_language_reads_prose_not_dot_leaders_or_syntax():
    raw = detect_language(CONTENTS)
    assert raw[0] == "en" and raw[1] < 0.45  # the page as it is: too weak to keep
    page = page_language(CONTENTS)
    assert page.lang == "en" and page.score > raw[1] + 0.1
    assert prose_text("1.2 Usage . . . . 7 -x, --flag=VALUE \\usepackage{x} a_b x=1 see the manual") == (
        "Usage see the manual"
    )
    # A page with almost no prose is identified on its whole text, and weighs little.
    assert page_language("\\setpagebl{height}{width}{ratio}").weight <= MIN_PROSE_CHARS


def test_prose_text_read_in_chunks_equals_reading_at_once():
    """`prose_text` reads in chunks and stops early; its words must be those of its first 8 * limit
    characters read at once: a token longer than a chunk (a URL, a run of macros) stays one token, and
    marks beyond U+FFFF (Brahmi's vowel signs) keep their words whole."""
    limit = 60
    url = "http://example.org/" + "a" * (3 * limit)  # longer than a chunk: one syntax token, dropped whole
    brahmi = "\U00011013\U00011038\U00011019"  # a Brahmi word: letter, vowel sign (a mark), letter
    texts = [
        ENGLISH * 3,
        url + " and the words after it " * 20,
        f"{brahmi} " * 40,
        CONTENTS,
        "x" * (9 * limit),
    ]
    for text in texts:
        syntax_gone = filters._DIGITS.sub(" ", filters._SYNTAX.sub(" ", text[: 8 * limit]))
        at_once = " ".join(filters._WORD.findall(syntax_gone))
        assert prose_text(text, limit) == at_once[:limit]
    assert "aaa" not in prose_text(texts[1], limit) and prose_text(texts[2], limit).startswith(brahmi + " ")


def test_document_language_is_the_vote_of_its_pages():
    doc = DocumentLanguage(threshold=0.5)
    for text in (CONTENTS, ENGLISH, FRENCH, ENGLISH):
        doc.add(page_language(text))
    lang, score = doc.decide()
    assert lang == "en" and score >= 0.5
    french = DocumentLanguage(threshold=0.5)
    for text in (FRENCH * 3, "The commands below are used as follows.", FRENCH * 3):
        french.add(page_language(text))
    assert french.decide()[0] == "fr"
    assert DocumentLanguage(0.5).decide() == ("unknown", 0.0)


def test_language_decision_per_page():
    keep = _filter(lang_scope="page")
    assert not keep.per_document
    fr, en = page_language(FRENCH), page_language(ENGLISH)
    assert not keep.accepts(fr.lang, fr.score) and keep.accepts(en.lang, en.score)
    assert _filter(languages="all").accepts("fr", 0.1)


def test_quality_reasons():
    keep = _filter(languages="all")
    assert keep.quality(_page("a", 0, "tiny")) == "too_little_text"
    blank = _page("a", 1, ENGLISH)
    blank.image[:] = 255  # text in the layer, nothing drawn (invisible text)
    assert keep.quality(blank) == "blank_page"
    assert keep.quality(_page("a", 2, "\ue000" * 40 + "some text here")) == "garbled_text"
    assert keep.quality(_page("a", 3, ENGLISH)) is None
