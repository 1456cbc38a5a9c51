"""The layout of ``serve_app/`` means something: a lower layer never imports a higher one.

Layers, lowest first: ``core``, ``transport``, ``edge``, ``apis``, ``state``, then the top-level modules
(``app``, ``settings``). A module may import its own layer or lower ones, one API package never
imports another, and nothing in ``serve_app`` imports Ray or vLLM (or the engine's torch). Every
import counts, including those inside functions.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "serve_app"
LAYERS = ["core", "transport", "edge", "apis", "state", "top"]
FORBIDDEN_ROOTS = {"ray", "vllm", "torch"}


def layer_of(module: str) -> str:
    """The layer of a dotted ``serve_app`` module name."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "top"


def api_of(module: str) -> str | None:
    """The API package (``openai``, ``ollama``...) a module belongs to, if any."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "apis" else None


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append(target)
            # `from serve_app.apis import openai` imports the submodule.
            found += [f"{target}.{alias.name}" for alias in node.names]
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def violations(imports: dict[str, list[str]]) -> list[str]:
    """Every import that breaks the layering, as ``importer -> imported (why)``."""
    problems = []
    for importer, targets in imports.items():
        rank = LAYERS.index(layer_of(importer))
        for target in targets:
            root = target.split(".")[0]
            if root in FORBIDDEN_ROOTS:
                problems.append(f"{importer} -> {target} (serve_app imports neither Ray nor vLLM)")
                continue
            if root != "serve_app" or target == "serve_app":
                continue
            if LAYERS.index(layer_of(target)) > rank:
                problems.append(f"{importer} -> {target} ({layer_of(importer)} is below {layer_of(target)})")
            elif api_of(importer) and api_of(target) and api_of(importer) != api_of(target):
                problems.append(f"{importer} -> {target} (one API never imports another)")
    return problems


def test_every_layer_folder_exists() -> None:
    for layer in LAYERS[:-1]:
        assert (PACKAGE / layer / "__init__.py").is_file(), layer


def test_no_module_imports_a_higher_layer_or_ray_or_vllm() -> None:
    imports = {module_name(path): imports_of(path) for path in modules()}
    assert len(imports) > 20  # the walk found the package
    assert violations(imports) == []


@pytest.mark.parametrize(
    ("importer", "target", "why"),
    [
        ("serve_app.core.gateway", "serve_app.edge.request_context", "core is below edge"),
        ("serve_app.transport.streaming", "serve_app.apis.openai.adapter", "transport is below apis"),
        ("serve_app.core.errors", "serve_app.settings", "core is below top"),
        ("serve_app.apis.ollama.routes", "serve_app.apis.openai.adapter", "one API never imports another"),
        ("serve_app.edge.metrics", "ray.util.metrics", "neither Ray nor vLLM"),
        ("serve_app.apis.openai.routes", "vllm.sampling_params", "neither Ray nor vLLM"),
        ("serve_app.apis.openai.adapter", "serve_app.state.store", "apis is below state"),
        ("serve_app.state.sql_store", "serve_app.settings", "state is below top"),
    ],
)
def test_the_check_catches_a_broken_rule(importer: str, target: str, why: str) -> None:
    [problem] = violations({importer: [target]})
    assert why in problem


def test_allowed_imports_pass() -> None:
    allowed = {
        "serve_app.apis.openai.routes": ["serve_app.core.gateway", "serve_app.edge.middleware", "fastapi"],
        "serve_app.edge.middleware": ["serve_app.transport.error_rendering", "serve_app.core.errors"],
        "serve_app.app": ["serve_app.apis.ollama.routes", "serve_app.settings"],
    }
    assert violations(allowed) == []


def test_importing_the_app_loads_neither_ray_nor_vllm() -> None:
    """The same rule at run time: building the app pulls no Ray or vLLM in transitively."""
    code = (
        "import sys, serve_app.app, serve_app.settings\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'vllm', 'torch'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
