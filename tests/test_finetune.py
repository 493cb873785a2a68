"""Fine-tuning: task data (JSONL and DocVQA-style files to shards), the prompt format, and `train.finetune` with
full, LoRA and PeriodicLoRA runs on real `deepspeed` ranks."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from tests.test_build_pdf import build, read_shards
from tests.test_pretrain import ENV, _metrics, _two_ranks


def _invoices(folder: Path, n: int, seed: int) -> list[dict]:
    """Made-up invoices (`invoice_page`) and the question "What is the total?" about each."""
    from data_pipeline.synthetic import invoice_page

    rng = random.Random(seed)
    (folder / "pages").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        image, _, total = invoice_page(rng)
        image.save(folder / "pages" / f"{i}.png")
        rows.append({"image": f"pages/{i}.png", "prompt": "What is the total?", "target": total})
    return rows


@pytest.fixture(scope="module")
def task_sources(tmp_path_factory) -> Path:
    """Shards of 24 invoice questions built with source=tasks, as a sources file of the prompt task."""
    src = tmp_path_factory.mktemp("invoices")
    rows = _invoices(src, 24, 0)
    (src / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path_factory.mktemp("invoice_shards")
    build("source=tasks", f"input={src}", f"output={out}", "workers=1", "dedup=false", "filters.languages=all",
          "docs_per_shard=1")  # fmt: skip
    sources = out.parent / f"{out.name}.json"
    sources.write_text(json.dumps([{"name": "invoices", "root": str(out), "task": "prompt"}]))
    return sources


@pytest.fixture(scope="module")
def pretrained(tokenizer, tmp_path_factory) -> Path:
    """A pre-training run folder of the tiny preset (its config and final weights) to fine-tune from."""
    from omegaconf import OmegaConf

    from model.config import get_config
    from model.kosmos import Kosmos25

    run = tmp_path_factory.mktemp("pretrained")
    OmegaConf.save(
        OmegaConf.create({"tokenizer": str(tokenizer.path), "model": {"preset": "tiny"}}), run / "config.yaml"
    )
    torch.manual_seed(0)
    torch.save(
        Kosmos25(get_config("tiny", text={"vocab_size": tokenizer.vocab_size})).state_dict(), run / "model.pt"
    )
    return run


def test_task_files_build_prompt_samples_and_count_what_they_cannot(tmp_path):
    """JSONL lines and a DocVQA-style question file become samples with prompt.txt, target.txt and answers.json;
    a missing image, an image outside the file's folder and a line that is not a sample are counted and named."""
    src = tmp_path / "src"
    rows = _invoices(src, 3, 1)
    rows += [
        {"image": "pages/missing.png", "prompt": "p", "target": "t"},
        {"image": "../outside.png", "prompt": "p", "target": "t"},
    ]
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (src / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    question = {
        "questionId": 7,
        "question": "What is the total?",
        "image": "pages/0.png",
        "answers": ["1.5", "$1.50"],
    }
    (src / "docvqa.json").write_text(json.dumps({"data": [question]}))
    out = tmp_path / "out"
    r = build("source=tasks", f"input={src}", f"output={out}", "workers=1", "dedup=false", "filters.languages=all",
              check=False)  # fmt: skip
    assert r.returncode != 0 and "exceeds max_error_rate" in r.stderr  # 3 errors in 7 entries
    for reason in ("missing_image", "image_outside_folder", "bad_line"):
        assert f"{reason}: {src / 'train.jsonl'}" in r.stdout, r.stdout[-3000:]
    samples = read_shards(out)
    assert len(samples) == 4
    docvqa = next(s for k, s in samples.items() if k.startswith("tasks/docvqa/"))
    assert docvqa["prompt.txt"].decode().startswith(
        "<md>A chat between"
    ) and "USER: What is the total? ASSISTANT:" in (docvqa["prompt.txt"].decode())
    assert docvqa["target.txt"] == b"1.5" and json.loads(docvqa["answers.json"]) == ["1.5", "$1.50"]
    first = samples["tasks/train/00000"]
    assert first["target.txt"].decode() == rows[0]["target"] and json.loads(first["answers.json"]) == [
        rows[0]["target"]
    ]


def test_the_prompt_format_puts_the_loss_on_the_target_only(tokenizer):
    from model.kosmos import IGNORE_INDEX
    from model.task_format import PromptError, TaskFormat

    fmt = TaskFormat(tokenizer, 8, 64)
    enc = fmt.encode_prompted("<md>USER: What is the total? ASSISTANT:", "12.50")
    target = [*tokenizer.encode("12.50"), tokenizer.eos_id]
    assert enc.input_ids[-len(target) :] == target and enc.labels[-len(target) :] == target
    assert all(x == IGNORE_INDEX for x in enc.labels[: -len(target)]) and not enc.truncated
    assert tokenizer.token_id("<md>") in enc.input_ids  # the chat prompt's task token is the special token
    assert enc.image_embeds_position_mask.count(1) == 8
    long = fmt.encode_prompted("total?", "word " * 200)
    assert long.truncated and len(long.input_ids) == 64
    with pytest.raises(PromptError, match="leaves no room"):
        fmt.encode_prompted("word " * 200, "x")


def _finetune(pretrained, task_sources, run, method, ranks=1, port=0, *extra, faults="", steps=6):
    args = [
        f"init={pretrained}", f"data.sources_file={task_sources}", f"method={method}", f"run_dir={run}",
        f"trainer.max_steps={steps}", "trainer.train_batch_size=4", "trainer.micro_batch_size=2", "trainer.max_length=128",
        "data.workers=0", "data.slots=2", "wandb.mode=disabled", "trainer.checkpoint_every=3", "trainer.dropout=0",
        "optim.warmup_steps=1", "optim.lr=0.003", "plora.interval=2", "plora.momentum=0.5", "lora.r=2", *extra,
        *(["trainer.test_faults=true"] if faults else []),
    ]  # fmt: skip
    if ranks == 2:
        cmd = _two_ranks(port, args)
        cmd[cmd.index("train.pretrain")] = "train.finetune"
    else:
        cmd = [sys.executable, "-m", "train.finetune", *args]
    env = {**ENV, "LITERATE_FAULTS": faults} if faults else ENV
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _evaluate(checkpoint, data, out: Path, *extra) -> dict:
    """`train.evaluate` as a user runs it; its metrics.json."""
    r = subprocess.run(
        [sys.executable, "-m", "train.evaluate", f"checkpoint={checkpoint}", f"data={data}", f"out={out}", *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((out / "metrics.json").read_text())


def _ok(r):
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


def test_trainable_parts_the_model_lacks_are_refused_before_start(pretrained, task_sources, tmp_path):
    r = _finetune(
        pretrained, task_sources, tmp_path / "run", "full", 1, 0, "finetune.trainable=[text_model,decoder]"
    )
    assert r.returncode == 2 and "finetune.trainable=['decoder']" in r.stderr, r.stderr[-2000:]
    assert "vision_model" in r.stderr and not (tmp_path / "run").exists()  # nothing started


@pytest.mark.parametrize(("method", "zero"), [("lora", "zero2"), ("plora", "zero3")])
def test_two_ranks_equal_one_rank(pretrained, task_sources, tmp_path, method, zero):
    """The same global batches on 1 rank (ZeRO-2) and 2 ranks (LoRA under ZeRO-2, PeriodicLoRA under ZeRO-3, whose
    unloads gather the partitioned weights): the same losses and the same merged weights."""
    one, two = tmp_path / "one", tmp_path / "two"
    r = _ok(_finetune(pretrained, task_sources, one, method))
    assert f"fine-tuning: method {method}" in r.stdout
    assert (method == "plora") == ("step 2: LoRA update unloaded" in r.stdout)
    _ok(_finetune(pretrained, task_sources, two, method, 2, 29671, f"deepspeed={zero}"))
    a, b = [m["loss"] for m in _metrics(one)], [m["loss"] for m in _metrics(two)]
    assert len(a) == 6 and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5, (a, b)
    wa, wb = (torch.load(run / "model.pt", weights_only=True) for run in (one, two))
    assert not any("lora" in k or "base_layer" in k for k in wa)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_a_killed_plora_run_resumes_where_its_stage_was(pretrained, task_sources, tmp_path):
    """PeriodicLoRA killed after step 3's checkpoint (mid-stage: unloads at 2, 4, 6) and started again: the losses
    and the final weights of the uninterrupted run. An unload restarts AdamW's step count: step 3's checkpoint
    holds a count of 1."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    _ok(_finetune(pretrained, task_sources, ref, "plora"))
    optim = torch.load(
        ref / "checkpoints/step0000003/zero_pp_rank_0_mp_rank_00_optim_states.pt", weights_only=False
    )["optimizer_state_dict"]["base_optimizer_state"]["state"]
    assert [float(s["step"]) for s in optim.values()] == [1.0]
    r = _finetune(pretrained, task_sources, run, "plora", faults="kill_after_pointer@3")
    assert r.returncode != 0 and "killed at step 3" in r.stderr
    r = _ok(_finetune(pretrained, task_sources, run, "plora"))
    assert "at step 3" in r.stdout and "step 4: LoRA update unloaded" in r.stdout
    want, got = ({m["step"]: m["loss"] for m in _metrics(x)} for x in (ref, run))
    assert max(abs(got[s] - want[s]) for s in range(1, 7)) < 1e-6
    wa, wb = (torch.load(x / "model.pt", weights_only=True) for x in (ref, run))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6


def test_merged_lora_weights_are_the_adapted_model_and_export_to_transformers(
    pretrained, task_sources, tokenizer, tmp_path
):
    """A LoRA run's model.export loads in transformers with the logits of its merged model.pt within 1e-4, and its
    adapter, put by PEFT on transformers' model of the starting weights, gives them too; full fine-tuning from a
    Hugging Face folder leaves the vision encoder as it was."""
    import transformers
    from peft import PeftModel

    from model.processor import ImageProcessor
    from model.run import load_run
    from model.task_format import TaskFormat

    run = tmp_path / "lora"
    _ok(_finetune(pretrained, task_sources, run, "lora"))
    merged, _ = load_run(run)
    fmt = TaskFormat(tokenizer, merged.config.latent_query_num, 128)
    image = Image.new("RGB", (320, 240), "white")
    ImageDraw.Draw(image).text((12, 200), "TOTAL 12.50", fill="black")
    page = ImageProcessor(merged.config.max_patches)(image).flattened_patches[None]
    ids, mask = fmt.text_prompt("What is the total?")
    inputs = {"input_ids": torch.tensor([ids]), "image_embeds_position_mask": torch.tensor([mask])}
    with torch.no_grad():
        ours = merged.eval()(**inputs, flattened_patches=page).logits
    for checkpoint, name in ((run, "hf"), (pretrained, "base")):
        r = subprocess.run([sys.executable, "-m", "model.export", f"checkpoint={checkpoint}", f"out={tmp_path / name}"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
    hf = transformers.Kosmos2_5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    base = transformers.Kosmos2_5ForConditionalGeneration.from_pretrained(tmp_path / "base").eval()
    adapted = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    attention = torch.ones_like(inputs["input_ids"])
    with torch.no_grad():
        for model in (hf, adapted):
            out = model(**inputs, flattened_patches=page, attention_mask=attention).logits
            assert (out - ours).abs().max().item() < 1e-4
    # train.evaluate scores the prompted task with ANLS and exact match
    result = _evaluate(run, task_sources, tmp_path / "eval", "n=3", "max_new_tokens=6")
    row = result["metrics"]["overall"]["prompt"]
    assert (
        row["pages"] == 3
        and 0 <= row["anls"] <= 1
        and 0 <= row["em"] <= 1
        and "invoices/prompt" in result["val_loss"]
    )
    assert "Prompted tasks" in (tmp_path / "eval" / "metrics.md").read_text()
    # full fine-tuning from that Hugging Face folder: the vision encoder stays as it was
    full = tmp_path / "full"
    _ok(_finetune(tmp_path / "hf", task_sources, full, "full", steps=2))
    before = load_run(tmp_path / "hf")[0].state_dict()
    after = torch.load(full / "model.pt", weights_only=True)
    vision = [k for k in before if k.startswith("vision_model.")]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("text_model."))


def _ocreval_fixture(root: Path, kind: str, n: int = 2) -> list[list[dict]]:
    """Invoice pages written in an OCREval subset's own layout; returns each page's lines."""
    from data_pipeline.synthetic import invoice_page

    rng, pages = random.Random(kind), []
    for i in range(n):
        image, lines, _ = invoice_page(rng)
        quads = [[x0, y0, x1, y0, x1, y1, x0, y1] for x0, y0, x1, y1 in (ln["bbox"] for ln in lines)]
        if kind == "funsd":
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "annotations").mkdir(exist_ok=True)
            image.save(root / "images" / f"p{i}.png")
            form = [{"id": k, "box": ln["bbox"], "text": ln["text"], "label": "other", "words": []} for k, ln in
                    enumerate(lines)]  # fmt: skip
            (root / "annotations" / f"p{i}.json").write_text(json.dumps({"form": form}))
        elif kind == "sroie":
            root.mkdir(parents=True, exist_ok=True)
            image.convert("RGB").save(root / f"p{i}.jpg")
            rows = [
                ",".join(str(v) for v in q) + f",{ln['text']}" for q, ln in zip(quads, lines, strict=True)
            ]
            (root / f"p{i}.txt").write_text("\n".join(rows) + "\n")
        else:
            (root / "image").mkdir(parents=True, exist_ok=True)
            (root / "json").mkdir(exist_ok=True)
            image.save(root / "image" / f"p{i}.png")
            valid = []
            for q, ln in zip(quads, lines, strict=True):
                words, x0, width = ln["text"].split(), q[0], (q[2] - q[0]) / len(ln["text"].split())
                valid.append({"category": "menu.nm", "words": [
                    {"text": w, "quad": {"x1": x0 + k * width, "y1": q[1], "x2": x0 + (k + 1) * width, "y2": q[1],
                                         "x3": x0 + (k + 1) * width, "y3": q[5], "x4": x0 + k * width, "y4": q[5]}}
                    for k, w in enumerate(words)]})  # fmt: skip
            meta = {"image_size": {"width": image.width, "height": image.height}}
            (root / "json" / f"p{i}.json").write_text(json.dumps({"valid_line": valid, "meta": meta}))
        pages.append(lines)
    return pages


@pytest.mark.parametrize("kind", ["funsd", "sroie", "cord"])
def test_ocreval_subsets_evaluate_in_their_own_layouts(pretrained, tmp_path, kind):
    """FUNSD, SROIE and CORD fixtures: recognised by their folders, their lines and boxes read as written, and
    scored end to end by train.evaluate on the text-recognition task."""
    from train.pages import detect_ocreval, ocreval_pages

    root = tmp_path / kind
    written = _ocreval_fixture(root, kind)
    assert detect_ocreval(root) == kind
    read = ocreval_pages(root, kind, 10)
    assert [p.lines for p in read] == [
        [{"text": ln["text"], "bbox": [float(v) for v in ln["bbox"]]} for ln in lines] for lines in written
    ]
    result = _evaluate(pretrained, root, tmp_path / "out", "max_new_tokens=12", "tasks=[ocr]")
    assert result["pages"] == 2 and set(result["metrics"]) == {kind, "overall"}
    assert set(result["metrics"]["overall"]["ocr"]) == {"pages", "precision", "recall", "f1", "iou", "ned"}
