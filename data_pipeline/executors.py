"""Executors run `task.run_task` over tasks: `local` (a process pool) or `ray` (a Ray cluster or a local
Ray instance). Both run the same function on the same tasks, so they write the same samples.

A worker that dies (a segfault in a native library, the OOM killer) breaks the local pool: the pool is
rebuilt and the unfinished tasks are resubmitted; a task that kills its worker twice is reported failed
(its shard has no JSON, so a later run tries it again) and the rest completes.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from data_pipeline.runner import die_with_parent
from data_pipeline.task import Task, run_task


class Progress:
    """A progress bar over documents with pages/s, samples and errors, fed by per-document counts."""

    def __init__(self, total_docs: int, desc: str):
        self.bar = tqdm(total=total_docs, desc=desc, unit="doc", dynamic_ncols=True, mininterval=0.5)
        self.pages = self.samples = self.errors = 0
        self.t0 = time.perf_counter()

    def update(self, docs: int, pages: int, samples: int, errors: int) -> None:
        self.pages += pages
        self.samples += samples
        self.errors += errors
        rate = self.pages / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(
            pages=self.pages, samples=self.samples, errors=self.errors, pages_s=f"{rate:.1f}", refresh=False
        )
        self.bar.update(docs)

    def drain(self, q) -> None:
        while True:
            try:
                item = q.get_nowait()
            except (queue.Empty, EOFError, OSError):
                return
            self.update(*item)

    def close(self) -> None:
        self.bar.close()


def run_local(tasks: list[Task], cfg, workers: int) -> tuple[list[dict], list[int]]:
    """Run tasks in `workers` processes; returns (stats of finished tasks, indices of failed tasks)."""
    ctx = mp.get_context("spawn")  # no fork: native libraries and threads in the parent stay out of workers
    manager = ctx.Manager()
    q = manager.Queue()
    progress = Progress(sum(len(t.docs) for t in tasks), f"build {cfg.source.name}")
    stop = threading.Event()
    pump = threading.Thread(target=_pump, args=(progress, q, stop), daemon=True)
    pump.start()
    results: dict[int, dict] = {}
    crashes: dict[int, int] = {}
    pending = list(tasks)
    try:
        while pending:
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=die_with_parent
            ) as pool:
                futures = {pool.submit(run_task, t, cfg, q): t for t in pending}
                broken = False
                while futures and not broken:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for f in done:
                        task = futures.pop(f)
                        try:
                            results[task.index] = f.result()
                        except BrokenProcessPool:
                            broken = True
                            crashes[task.index] = crashes.get(task.index, 0) + 1
                        except Exception as e:  # a bug outside the per-document guard: report, go on
                            tqdm.write(f"task {task.index} failed: {type(e).__name__}: {e}")
                            crashes[task.index] = 2
                if broken:
                    for f, task in futures.items():
                        if f.done() and not f.exception():
                            results[task.index] = f.result()
                    tqdm.write("a worker died; restarting the pool for the unfinished tasks")
            pending = [t for t in tasks if t.index not in results and crashes.get(t.index, 0) < 2]
    finally:
        stop.set()
        pump.join()
        progress.drain(q)
        progress.close()
        manager.shutdown()
    failed = sorted(t.index for t in tasks if t.index not in results)
    return [results[i] for i in sorted(results)], failed


def _pump(progress: Progress, q, stop: threading.Event) -> None:
    while not stop.is_set():
        progress.drain(q)
        stop.wait(0.2)


def run_ray(tasks: list[Task], cfg, workers: int) -> tuple[list[dict], list[int]]:
    """Run tasks as Ray tasks on `cfg.ray.address` (a running cluster) or a local Ray instance."""
    import ray

    address = cfg.ray.get("address") or None
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": address} if address else {"num_cpus": workers, "include_dashboard": False}
        ray.init(ignore_reinit_error=True, log_to_driver=False, **kwargs)
    remote = ray.remote(num_cpus=1, max_retries=1)(run_task)
    progress = Progress(sum(len(t.docs) for t in tasks), f"build {cfg.source.name} (ray)")
    refs = {remote.remote(t, cfg): t for t in tasks}
    results: dict[int, dict] = {}
    failed: list[int] = []
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                task = refs.pop(ref)
                try:
                    stats = ray.get(ref)
                    results[task.index] = stats
                    progress.update(
                        len(task.docs), stats["pages"], stats["samples"], sum(stats["errors"].values())
                    )
                except Exception as e:
                    tqdm.write(f"task {task.index} failed on ray: {type(e).__name__}: {e}")
                    failed.append(task.index)
                    progress.update(len(task.docs), 0, 0, 0)
    finally:
        progress.close()
        if started_here:
            ray.shutdown()
    return [results[i] for i in sorted(results)], sorted(failed)


EXECUTORS: dict[str, Callable] = {"local": run_local, "ray": run_ray}
