"""What the benchmarks that run whole builds share."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_build(source: str, inputs: str | Path, output: Path, *overrides: str) -> None:
    """`python -m data_pipeline.build` over `inputs` into `output`, without dedup. Exit status 1 (some pages
    failed) is a result the benchmarks count from the shards; anything else stops the benchmark with the
    build's error."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipeline.build",
            f"source={source}",
            f"input={inputs}",
            f"output={output}",
            "dedup=false",
            *overrides,
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode not in (0, 1):
        sys.exit(f"build failed:\n{r.stderr[-3000:]}")


def build_config(source: str, output: Path, **overrides):
    """The build's config for `source` as the CLI composes it, one worker, every language kept, for a
    benchmark that runs the builder in-process; `overrides` are dotted keys (`source__ocr_threads=1` sets
    `source.ocr_threads`)."""
    from omegaconf import OmegaConf

    from configs.compose import compose

    extra = [f"{key.replace('__', '.')}={value}" for key, value in overrides.items()]
    cfg = compose("build", [f"source={source}", "input=unused", f"output={output}", "workers=1",
                            "filters.languages=all", *extra])  # fmt: skip
    OmegaConf.resolve(cfg)
    return cfg
