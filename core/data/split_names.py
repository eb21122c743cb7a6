"""Split names of a source, optionally sliced: `train`, `train[:2750]`, `train[-250:]`.

A slice takes entries of that source split by their position in the file (Python slice rules), so a
selection split can be carved from train (`val: ['train[-250:]']`, `train: ['train[:-250]']`) and
model selection never needs the split a run reports.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_PATTERN = re.compile(r"^(?P<split>[^\[\]]+?)(?:\[(?P<start>-?\d+)?:(?P<stop>-?\d+)?\])?$")


@dataclass(frozen=True)
class SplitName:
    split: str
    rows: slice | None = None  # None: the whole split


def parse_split_name(text: str) -> SplitName:
    match = _PATTERN.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"split name {text!r}: expected NAME or NAME[start:stop] (e.g. 'train[:-250]')")
    if "[" not in text:
        return SplitName(match["split"])
    return SplitName(match["split"], slice(*(None if v is None else int(v) for v in (match["start"], match["stop"]))))


def selected(entry_splits: Sequence[str | None], names: Sequence[str]) -> list[bool]:
    """For each entry (its source split, in file order), whether one of `names` takes it."""
    wanted = [parse_split_name(n) for n in names]
    counts: dict[str | None, int] = {}
    positions = []
    for split in entry_splits:
        positions.append(counts.get(split, 0))
        counts[split] = positions[-1] + 1
    taken: dict[str, set[int] | None] = {}
    for name in wanted:
        if name.rows is None or taken.get(name.split, set()) is None:
            taken[name.split] = None
        else:
            taken.setdefault(name.split, set()).update(range(counts.get(name.split, 0))[name.rows])
    return [split in taken and (taken[split] is None or pos in taken[split])
            for split, pos in zip(entry_splits, positions, strict=True)]
