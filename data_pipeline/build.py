"""Build webdataset shards from documents.

    python -m data_pipeline.build source=<pdf|scan|...> input=<dir, glob, list file or s3://prefix> output=<dir or s3://prefix> \
        [workers=N] [executor=local|ray] [docs_per_shard=16] [task_index=i task_count=n] [manifest_only=true]

Writes `shard-NNNNN.tar` + `shard-NNNNN.json` per task, `plan.json`, and `manifest.json`. Exit status 0 when
the error rate (failed pages / pages seen) is within `max_error_rate`, 1 above it or when tasks failed,
2 for a bad configuration (reported before any work starts).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from configs.compose import CONFIG_DIR, ConfigError, answered_help, register
from configs.schema import Build, check_ranges
from data_pipeline import storage
from data_pipeline.documents import list_inputs
from data_pipeline.executors import EXECUTORS
from data_pipeline.manifest import write_manifest
from data_pipeline.render import sandbox
from data_pipeline.render.netguard import allowance
from data_pipeline.sources import SOURCES, get_source
from data_pipeline.task import plan_tasks

register()  # the schema of build.yaml (configs/schema.py), which Hydra checks as it composes


def validate(cfg: DictConfig):
    """Everything that can be checked before work starts; returns the source module."""
    try:
        source = get_source(cfg.source.name)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    check_ranges(cfg, Build)  # types and choices: Hydra checked them against the same schema as it composed
    if (cfg.task_index is None) != (cfg.task_count is None):
        raise ConfigError("task_index and task_count go together")
    if cfg.task_count is not None and not 0 <= int(cfg.task_index) < int(cfg.task_count):
        raise ConfigError(f"task_index={cfg.task_index} is not in [0, task_count={cfg.task_count})")
    langs = cfg.filters.languages
    if not (langs == "all" or OmegaConf.is_list(langs)):
        raise ConfigError(f"filters.languages={langs!r}: a list of ISO codes or 'all'")
    if not 0 <= float(cfg.filters.lang_threshold) <= 1 or float(cfg.filters.get("lang_hold_mb", 0)) < 0:
        raise ConfigError("filters.lang_threshold must be in [0, 1] and filters.lang_hold_mb >= 0")
    memory = cfg.get("worker_memory_mb", "auto")
    if memory != "auto" and not (isinstance(memory, int | float) and memory > 0):
        raise ConfigError(f"worker_memory_mb={memory!r}: a number of MB > 0, or auto")
    if float(cfg.source.get("doc_timeout", 0)) < 0:
        raise ConfigError(f"source.doc_timeout={cfg.source.doc_timeout}: seconds >= 0 (0: no limit)")
    try:
        allowance(tuple(cfg.browser.get("allow_addresses") or ()))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    why = sandbox.check(str(cfg.get("sandbox", "bwrap")))
    if why:
        raise ConfigError(why)
    for tool in getattr(source, "REQUIRED_TOOLS", ()):
        if shutil.which(tool) is None:
            raise ConfigError(
                f"source={cfg.source.name} needs `{tool}` on PATH (see the Makefile's APT_PACKAGES)"
            )
    if hasattr(source, "check_config"):
        try:
            source.check_config(cfg.source)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    if storage.is_object_store(cfg.output):
        if cfg.dedup:
            raise ConfigError(
                f"output={cfg.output}: dedup runs on a local output; set dedup=false (or build locally and copy)"
            )
        try:
            storage.write_text(cfg.output, ".literate-write-check", "")
        except Exception as e:  # credentials, bucket, endpoint: said before any work
            raise ConfigError(f"output={cfg.output} is not writable ({type(e).__name__}: {e})") from None
        return source
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise ConfigError(f"output={out} is not writable")
    return source


def _plan(cfg: DictConfig, source) -> tuple[list, int]:
    """Tasks from the inputs; `plan.json` pins them so a rerun over changed inputs is refused, not mixed."""
    docs = list_inputs(str(cfg.input), tuple(source.EXTENSIONS))
    tasks = plan_tasks(docs, int(cfg.docs_per_shard))
    digest = hashlib.sha256("\n".join(d.path for d in docs).encode()).hexdigest()
    plan = {
        "source": cfg.source.name,
        "input": str(cfg.input),
        "documents": len(docs),
        "tasks": len(tasks),
        "docs_per_shard": int(cfg.docs_per_shard),
        "inputs_sha256": digest,
    }
    path = storage.join(cfg.output, "plan.json")
    if storage.output_exists(cfg.output, "plan.json"):
        old = json.loads(storage.read_text(cfg.output, "plan.json"))
        if {k: old.get(k) for k in plan} != plan:
            raise ConfigError(
                f"{path} was written for other inputs or settings ({old.get('documents')} documents, "
                f"{old.get('tasks')} tasks, docs_per_shard={old.get('docs_per_shard')}): use a new output folder"
            )
    else:
        storage.write_text(cfg.output, "plan.json", json.dumps(plan, indent=1))
    return tasks, len(docs)


def summarize(results: list[dict], failed: list[int], n_docs: int) -> dict:
    errors, skips = Counter(), Counter()
    pages = samples = 0
    for r in results:
        errors.update(r["errors"])
        skips.update(r["skips"])
        pages += r["pages"]
        samples += r["samples"]
    n_err = sum(errors.values())
    return {
        "documents": n_docs,
        "tasks_done": len(results),
        "tasks_skipped": sum(bool(r.get("skipped")) for r in results),
        "tasks_failed": failed,
        "pages": pages,
        "samples": samples,
        "errors": dict(errors),
        "skips": dict(skips),
        "error_rate": n_err / pages if pages else 0.0,
        "error_examples": [e for r in results for e in r.get("error_examples", [])][:10],
    }


def run(cfg: DictConfig) -> int:
    if cfg.workers is None:
        cfg.workers = os.cpu_count() or 1
    OmegaConf.resolve(cfg)
    try:
        source = validate(cfg)
        tasks, n_docs = _plan(cfg, source)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = str(cfg.output)
    n_tasks = len(tasks)
    if cfg.task_count is not None:
        tasks = tasks[int(cfg.task_index) :: int(cfg.task_count)]
    summary = None
    if not cfg.manifest_only:
        results, failed = EXECUTORS[cfg.executor](tasks, cfg, int(cfg.workers))
        summary = summarize(results, failed, n_docs)
        print(json.dumps(summary, indent=1))
    if cfg.task_count is None or cfg.manifest_only:
        if cfg.dedup:
            from data_pipeline.dedup import deduplicate

            deduplicate(Path(out), n_tasks, workers=int(cfg.workers))
        manifest = write_manifest(out, cfg.source.name, n_tasks)
        print(
            f"manifest: {storage.join(out, 'manifest.json')}: {manifest['finished']}/{n_tasks} shards, "
            f"{manifest['totals']['samples']} samples, {manifest.get('dropped', 0)} near-duplicates dropped"
        )
    if summary is None:
        return 0
    if summary["tasks_failed"]:
        print(f"error: tasks {summary['tasks_failed']} failed; rerun to retry them", file=sys.stderr)
        return 1
    if summary["error_rate"] > float(cfg.max_error_rate):
        print(
            f"error: error rate {summary['error_rate']:.4f} exceeds max_error_rate={cfg.max_error_rate}",
            file=sys.stderr,
        )
        return 1
    return 0


@hydra.main(config_path=str(CONFIG_DIR), config_name="build", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    if answered_help(sys.argv[1:], __doc__, "build.yaml"):
        print("\nsource: one of " + ", ".join(SOURCES) + " (configs/source/<name>.yaml)")
        sys.exit(0)
    main()
