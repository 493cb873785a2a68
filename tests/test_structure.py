"""The code's shape, read with the standard library's `ast`: the project's import graph has no cycle, every
module says what it owns, and no module outside the tests grows past 450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("configs", "model", "train", "data_pipeline", "launch", "benchmarks")
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the project's modules it imports, at any level of the file (an import inside a function is an
    arrow too: it only hides a circle)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycles_are_found():
    """The checker itself: a circle hidden in a function is a cycle; a chain is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph(_modules())) == []


def test_every_module_says_what_it_owns_and_stays_readable():
    modules = _modules()
    undocumented = [
        name
        for name, path in modules.items()
        if path.name != "__init__.py" and not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert not undocumented, undocumented
    long = {
        name: n for name, path in modules.items() if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


CLIS = (
    "data_pipeline.build", "data_pipeline.inspect", "data_pipeline.dedup", "data_pipeline.snippet_text",
    "data_pipeline.demo_corpus", "model.tokenizer", "model.export", "train.pretrain", "train.finetune",
    "train.evaluate", "train.demo", "launch.plan", "launch.corpus", "benchmarks.learning", "benchmarks.source_rates",
)  # fmt: skip


def test_every_command_line_answers_help_with_its_usage():
    """`python -m <entry point> --help` prints its usage and exits 0 (a config entry point does not try to
    compose a config whose required keys are missing)."""
    import subprocess
    import sys

    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", name, "--help"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in CLIS
    }
    for name, proc in procs.items():
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0 and "Traceback" not in out, (name, out[-2000:])
        assert "usage" in out.lower() or "python -m" in out or "powered by Hydra" in out, (name, out[:500])
