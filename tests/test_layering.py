"""Dependencies point one way (docs: DESIGN's layout), checked on the source, not by importing it.

    apps -> data_recipes -> tts -> speech-LLM core (speechlm, adapters, whisper, generation, ...)
         -> quant -> basics (audio, features, zoo, manifest, files, checkpoints, device, ...)

Every module of the five product folders is parsed (``ast``) and each ``import`` in it, at the top
or inside a function, is an edge. The test fails on an edge that points up a layer (the core
importing tts or apps, a basic importing the core, anything importing apps), on ``quant`` importing
anything speech-specific, and on any import circle, naming the modules of each.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> import name (pyproject.toml's package-dir)
PACKAGES = {"speechllm": "speechllm", "adapters": "speechllm.adapters", "tts": "speechllm.tts",
            "apps": "speechllm.apps", "data_recipes": "speechllm.data_recipes"}

# modules of speechllm/ that know nothing of the speech-LLM: the ground everything stands on
BASICS = {"audio", "augment", "checkpoints", "device", "features", "files", "hf_cache", "limits", "manifest",
          "metrics", "metrics_bleu", "native", "schedule", "segment", "text_normalize", "vad", "zoo"}
# what quant/ may use besides itself: nothing about speech
QUANT_MAY_USE = {"speechllm.files", "speechllm.device", "speechllm.hf_cache", "speechllm.native"}
LAYERS = ["basics", "quant", "core", "tts", "data_recipes", "api", "apps"]  # bottom to top


def module_files() -> dict[str, Path]:
    mods = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([package, *parts])] = path
    return mods


def layer(module: str) -> str:
    """The layer of a product module (``api`` is the ``speechllm`` package itself: load, transcribe)."""
    parts = module.split(".")
    if module == "speechllm":
        return "api"
    if parts[1] in ("apps", "data_recipes", "tts", "quant"):
        return parts[1]
    return "basics" if parts[1] in BASICS else "core"


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The product modules ``module`` imports (``from pkg import name`` counts ``pkg.name`` when that
    is a module, else ``pkg``)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.update(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                         for alias in node.names)
    edges = set()
    for name in found:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in known and name != module and name.startswith("speechllm"):
            edges.add(name)
    return edges


def import_graph() -> dict[str, set[str]]:
    known = module_files()
    return {module: imports(module, path, known) for module, path in known.items()}


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            here, there = layer(module), layer(target)
            if there == "apps" and here != "apps":
                problems.append(f"{module} imports {target}: nothing outside apps imports apps")
            elif rank[there] > rank[here]:
                problems.append(f"{module} ({here}) imports {target} ({there}): a layer above it")
            elif here == "quant" and there != "quant" and target not in QUANT_MAY_USE:
                problems.append(f"{module} imports {target}: quant uses nothing speech-specific")
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_import_points_down_the_layers():
    problems = wrong_way(import_graph())
    assert not problems, "imports that point the wrong way:\n" + "\n".join(problems)


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


# ---------------------------------------------------------------- the checker itself


@pytest.mark.parametrize("module, expected", [
    ("speechllm", "api"), ("speechllm.files", "basics"), ("speechllm.zoo", "basics"),
    ("speechllm.quant.model", "quant"), ("speechllm.speechlm.io", "core"), ("speechllm.adapters.ctc", "core"),
    ("speechllm.tts.voices", "tts"), ("speechllm.data_recipes.synth", "data_recipes"),
    ("speechllm.apps.chat.ui", "apps"),
])
def test_layers_are_named_by_folder(module, expected):
    assert layer(module) == expected


def test_the_checker_finds_wrong_way_imports_and_circles():
    graph = {
        "speechllm.files": {"speechllm.speechlm.io"},  # a basic importing the core
        "speechllm.speechlm.io": {"speechllm.tts.voices"},  # the core importing tts
        "speechllm.tts.voices": {"speechllm.apps.chat.voices"},  # tts importing apps
        "speechllm.quant.model": {"speechllm.audio", "speechllm.files"},  # quant: audio is speech
        "speechllm.adapters.base": {"speechllm.adapters.ctc"},
        "speechllm.adapters.ctc": {"speechllm.adapters.base"},
        "speechllm.apps.chat.ui": {"speechllm.tts.voices", "speechllm"},  # fine: apps sit on top
    }
    problems = wrong_way(graph)
    assert len(problems) == 4, problems
    assert any("speechllm.files (basics) imports speechllm.speechlm.io (core)" in p for p in problems)
    assert any("nothing outside apps imports apps" in p for p in problems)
    assert any("speechllm.audio: quant uses nothing speech-specific" in p for p in problems)
    assert circles(graph) == [["speechllm.adapters.base", "speechllm.adapters.ctc"]]


def test_imports_are_read_from_source(tmp_path):
    known = {"speechllm.quant": tmp_path / "__init__.py", "speechllm.quant.model": tmp_path / "model.py",
             "speechllm.quant.rtn": tmp_path / "rtn.py", "speechllm.files": tmp_path / "files.py"}
    (tmp_path / "rtn.py").write_text("from .model import x\nfrom ..files import y\n"
                                     "def f():\n    from speechllm.quant import model\n")
    assert imports("speechllm.quant.rtn", tmp_path / "rtn.py", known) == {
        "speechllm.quant.model", "speechllm.files"}


def test_the_wheel_lists_every_package_and_the_files_they_read():
    """pyproject.toml names packages one by one (the editable install the Makefile makes does not care;
    ``pip install .`` does): every folder with an ``__init__.py`` must be listed, and the C source the
    engine compiles (and its headers) must be package data."""
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {package: ROOT / folder for folder, package in PACKAGES.items()}
    found = {".".join([package, *init.parent.relative_to(root).parts])
             for package, root in folders.items() for init in root.rglob("__init__.py")}
    assert found - set(tool["packages"]) == set()
    for package, root in folders.items():
        for source in [*root.rglob("*.c"), *root.rglob("*.h")]:
            owner = ".".join([package, *source.parent.relative_to(root).parts])
            assert source.name in tool["package-data"].get(owner, []), source
