"""Composing the configs outside `@hydra.main`: `compose_app("evaluate", overrides)` reads
`configs/tools/evaluate.yaml` with command-line overrides by Hydra's rules (as for training: an unknown key or
a badly typed value is refused), the model presets registered as the `model` group. `ConfigError` is what
every entry point raises for a config value it refuses, naming the key, before any work starts."""

from __future__ import annotations

from pathlib import Path

from configs.schema import ConfigError, register_schemas
from model.config import register_hydra_presets

__all__ = [
    "CONFIG_DIR",
    "ConfigError",
    "answered_help",
    "compose",
    "compose_app",
    "recipe_stages",
    "register",
    "tool_main",
]

CONFIG_DIR = Path(__file__).resolve().parent
RECIPE_DIR = CONFIG_DIR / "tools" / "recipes"  # stages of `python -m benchmarks.learning --recipe`


def answered_help(argv: list[str], doc: str | None, config: str) -> bool:
    """`-h`/`--help` among `argv`: print the entry point's usage (its module docstring) and its config's keys
    with their defaults (`configs/<config>`), and say so; a config entry point then exits 0 (Hydra's own help
    would try to compose a config whose required keys are not given)."""
    if not any(a in ("-h", "--help") for a in argv):
        return False
    print((doc or "").strip())
    print(
        f"\nEvery key below is set as key=value (Hydra's override syntax); defaults from {CONFIG_DIR / config}:\n"
    )
    print((CONFIG_DIR / config).read_text().rstrip())
    return True


def register() -> None:
    """Hydra's structured configs: the model presets (the `model` group) and the groups' schemas
    (`configs.schema`). Every entry point calls it before Hydra composes."""
    register_hydra_presets()
    register_schemas()


def compose(name: str, overrides: list[str], folder: str = ""):
    """The config `configs/<folder>/<name>.yaml` composed with `overrides` by Hydra's rules, as its entry point
    composes it (required keys may stay unset: a benchmark takes the groups it needs, e.g. `deepspeed`).
    Raises ValueError with Hydra's message. Hydra is imported here only: the model library does not need it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR / folder), version_base="1.3"):
            return hydra_compose(name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        cause = f": {e.__cause__}" if e.__cause__ else ""
        raise ValueError(f"{e}{cause}".strip()) from None


def tool_main(argv: list[str], doc: str | None, name: str, action) -> int:
    """A tool's command line: `--help` answered, `configs/tools/<name>.yaml` composed with `argv`, the text
    `action(cfg)` returns printed; a refused value (ValueError) is said on stderr and exits 2."""
    import sys

    if answered_help(argv, doc, f"tools/{name}.yaml"):
        return 0
    try:
        print(action(compose_app(name, argv)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def compose_app(name: str, overrides: list[str]):
    """The config `configs/tools/<name>.yaml` with command-line `overrides`. Raises ValueError with Hydra's
    message, or naming the required keys left unset."""
    from omegaconf import OmegaConf

    cfg = compose(name, overrides, "tools")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"required: {', '.join(f'{k}=...' for k in missing)}")
    return cfg


def recipe_stages(recipe: str) -> list[dict]:
    """A recipe's stages, each `{name, overrides}`: `configs/tools/recipes/<recipe>.yaml`, or a YAML file's path."""
    from omegaconf import OmegaConf

    path = Path(recipe) if recipe.endswith((".yaml", ".yml")) else RECIPE_DIR / f"{recipe}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")))
        raise ValueError(f"--recipe {recipe}: no {path} (recipes: {known})")
    try:
        stages = OmegaConf.to_container(OmegaConf.load(path)).get("stages") or []
    except Exception as e:  # YAML's own errors: a recipe written by hand
        raise ValueError(f"{path}: {e}") from None
    if not stages or not all(isinstance(s, dict) and s.get("name") for s in stages):
        raise ValueError(f"{path}: `stages` must list {{name, overrides}} entries")
    return [{"name": str(s["name"]), "overrides": [str(o) for o in s.get("overrides") or []]} for s in stages]
