"""The house rules a newcomer relies on: no import circle, the pure modules import without the
network, config or model stack, and no class or function too long to read at once."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("streamdet", "train")
MAX_CLASS_LINES, MAX_FUNCTION_LINES = 150, 60


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `module` imports (at any depth of the file: lazy imports count too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known} or ({target} & known)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
    return found - {module}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle a depth-first walk of `graph` meets (each as the modules around it)."""
    found, done = [], set()

    def visit(node, trail):
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                found.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, trail + [nxt])
        done.add(node)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    return found


def test_no_module_imports_itself_through_others():
    modules = _modules()
    found = cycles({m: _imports(m, p, set(modules)) for m, p in modules.items()})
    assert not found, "import circle: " + " -> ".join(found[0])


def test_the_walk_sees_relative_and_lazy_imports_and_finds_a_circle(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n\ndef f():\n    from . import c\n")
    assert _imports("p.a", tmp_path / "a.py", {"p.a", "p.b", "p.c"}) == {"p.b", "p.c"}
    assert cycles({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}}) == [["p.a", "p.b", "p.c", "p.a"]]
    assert cycles({"p.a": {"p.b"}, "p.b": set()}) == []


# What each pure module may load: the hysteresis and the config import no library at all, the
# schema and the subscriber's view no network stack.
PURE = {
    "streamdet.detect.events": ("zmq", "yaml", "torch", "numpy"),
    "streamdet.config": ("zmq", "yaml", "torch", "numpy"),
    "streamdet.addresses": ("zmq", "yaml", "torch", "numpy"),
    "streamdet.bus.messages": ("zmq", "yaml", "torch"),
    "streamdet.subscribers.streamview": ("zmq", "yaml", "torch"),
    "streamdet.capture.ringbuffer": ("zmq", "yaml", "torch"),
    "streamdet.subscribers.web.state": ("zmq", "yaml", "torch", "aiohttp"),
}


def test_pure_modules_import_without_the_network_config_or_model_stack():
    code = "import importlib, json, sys\nout = {}\nfor m, banned in json.loads(sys.argv[1]).items():\n" \
           "    before = set(sys.modules)\n    importlib.import_module(m)\n    out[m] = sorted(b for b in banned if b in sys.modules)\n" \
           "    for k in set(sys.modules) - before: del sys.modules[k]\nprint(json.dumps(out))"
    import json

    result = subprocess.run([sys.executable, "-c", code, json.dumps(PURE)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = {m: b for m, b in json.loads(result.stdout).items() if b}
    assert loaded == {}, f"these modules pull in what they should not: {loaded}"


def test_classes_and_functions_fit_on_a_screen_or_three():
    too_long = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef) and lines > MAX_CLASS_LINES:
                too_long.append(f"class {module}.{node.name}: {lines} lines")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and lines > MAX_FUNCTION_LINES:
                too_long.append(f"function {module}.{node.name}: {lines} lines")
    assert not too_long, "; ".join(too_long)
