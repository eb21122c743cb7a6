"""`export/runtime/` runs without torch by construction: what it imports, transitively, is checked from source.

Parsing (not importing) sees every import statement, including those inside functions and
`TYPE_CHECKING` blocks, so a torch import anywhere the runtime can reach fails here, not at a user's.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = {"core", "teacher", "student", "export", "eval", "distill"}
FORBIDDEN = {"torch", "torchvision", "timm", "transformers", "sentence_transformers", "onnx", "onnxscript"}
# The project modules outside the runtime that it may import: each torch-free, added here deliberately.
ALLOWED_CORE = {"core.io", "core.data.images", "core.machine", "core.timing"}
# Third-party imports the runtime may make -> its line in requirements/runtime.txt (None: optional).
THIRD_PARTY = {"numpy": "numpy", "PIL": "pillow", "onnxruntime": "onnxruntime", "tokenizers": "tokenizers",
               "faiss": None}
# The web framework of `itr-distill serve` -> its line in requirements/serve.txt: only SERVE_MODULE may import
# it (lazily, so that the CLI and `search` run in a runtime install without the serve extra).
SERVE_MODULE = "export.runtime.serve"
SERVE_THIRD_PARTY = {"starlette": "starlette", "uvicorn": "uvicorn", "python_multipart": "python-multipart",
                     "multipart": "python-multipart"}


def _file(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _imports(module: str, root: Path) -> set[str]:
    """The module each import statement of `module` names, anywhere in it (`from a import b`: `a.b` if a module, else `a`)."""
    path = _file(module, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{alias.name}"
                names.add(sub if base.split(".")[0] in PROJECT and _file(sub, root) else base)
    return names


def _project_modules(name: str, root: Path) -> list[str]:
    """The project modules importing `name` runs: each package on its path, and the module itself."""
    parts = name.split(".")
    if parts[0] not in PROJECT:
        return []
    return [m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if _file(m, root)]


def runtime_modules(root: Path = ROOT) -> list[str]:
    return sorted(".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                  for p in (root / "export" / "runtime").rglob("*.py"))


def closure(modules: list[str], root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the names it imports, for `modules` and every project module they reach, transitively."""
    graph: dict[str, set[str]] = {}
    todo = [m for module in modules for m in _project_modules(module, root)]
    while todo:
        module = todo.pop()
        if module not in graph:
            graph[module] = _imports(module, root)
            todo += [m for name in graph[module] for m in _project_modules(name, root)]
    return graph


def _top_levels(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_nothing_the_runtime_reaches_imports_torch():
    graph = closure(runtime_modules())
    assert {"export.runtime.session", "core.io", "core.data.images", "export"} <= set(graph)
    offenders = {m: sorted(_top_levels(names) & FORBIDDEN) for m, names in graph.items() if _top_levels(names) & FORBIDDEN}
    assert not offenders, f"reachable from export/runtime/, these import torch-side packages: {offenders}"


def test_the_runtime_imports_only_itself_and_the_allowed_core_modules():
    for module in runtime_modules():
        for name in _imports(module, ROOT):
            reached = _project_modules(name, ROOT)
            if reached and not (reached[-1].split(".")[:2] == ["export", "runtime"] or reached[-1] in ALLOWED_CORE):
                raise AssertionError(f"{module} imports {reached[-1]}: not in the runtime's allow-list "
                                     "(add a torch-free module to ALLOWED_CORE deliberately)")


def _listed(requirements: str) -> set[str]:
    lines = (ROOT / "requirements" / requirements).read_text(encoding="utf-8").lower().splitlines()
    return {re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0] for line in lines if not line.startswith("#")}


def test_third_party_imports_are_the_runtime_requirements():
    allowed = set(THIRD_PARTY) | set(SERVE_THIRD_PARTY)
    used = set().union(*map(_top_levels, closure(runtime_modules()).values())) - PROJECT - set(sys.stdlib_module_names)
    assert used <= allowed, f"the runtime imports {sorted(used - allowed)}, not in its requirements"
    missing = [req for req in THIRD_PARTY.values() if req and req not in _listed("runtime.txt")]
    assert not missing, f"requirements/runtime.txt lacks {missing}"
    missing = [req for req in SERVE_THIRD_PARTY.values() if req not in _listed("serve.txt")]
    assert not missing, f"requirements/serve.txt lacks {missing}"


def test_only_the_serve_module_imports_the_web_framework():
    graph = closure(runtime_modules())
    assert SERVE_MODULE in graph and _top_levels(graph[SERVE_MODULE]) & {"starlette", "uvicorn"}
    offenders = {m: sorted(_top_levels(names) & set(SERVE_THIRD_PARTY)) for m, names in graph.items()
                 if m != SERVE_MODULE and _top_levels(names) & set(SERVE_THIRD_PARTY)}
    assert not offenders, f"only {SERVE_MODULE} may import the web framework: {offenders}"


def test_the_check_sees_torch_imported_inside_a_function_of_a_core_module(tmp_path):
    files = {"export/__init__.py": "", "export/runtime/__init__.py": "from . import a\n",
             "export/runtime/a.py": "from core.io import read\n", "core/__init__.py": "",
             "core/io.py": "def read():\n    import torch.nn\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = closure(runtime_modules(tmp_path), tmp_path)
    assert set(graph) == {"export", "export.runtime", "export.runtime.a", "core", "core.io"}
    assert _top_levels(graph["core.io"]) & FORBIDDEN == {"torch"}


IMPORT_WITHOUT_TORCH = f"""
import sys
for name in {sorted(FORBIDDEN | set(SERVE_THIRD_PARTY))}:
    sys.modules[name] = None  # any import of it now raises ImportError (the web framework too: an optional extra)
import export.runtime.search, export.runtime.serve, export.runtime.load_test
assert "onnxruntime" not in sys.modules, "the CLI's parser (export.runtime.search, .serve) loaded onnxruntime"
import export.runtime.session, export.runtime.index, export.runtime.device_check
from export.runtime import OnnxStudent, GalleryIndex
"""


def test_the_runtime_imports_with_torch_unimportable():
    done = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_TORCH], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
