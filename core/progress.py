"""Progress bars for long work: shown on a terminal, silent in logs and CI (one line per epoch is logged instead)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable, desc: str, enabled: bool = True, **kwargs: Any) -> tqdm:
    """tqdm over `iterable`; `disable=None` lets tqdm hide the bar when stderr is not a terminal."""
    return tqdm(iterable, desc=desc, disable=None if enabled else True, leave=False, dynamic_ncols=True, **kwargs)
