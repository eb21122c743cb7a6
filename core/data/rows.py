"""`ConcatenatedRows`: several arrays read as one, stacked along the first axis, without copying."""
from __future__ import annotations

import operator
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

import numpy as np


class ConcatenatedRows:
    """Read-only view of arrays sharing shape[1:] and dtype, stacked along axis 0, never copied whole.

    One split can span several feature files: COCO training reads `train_ims.npy` and
    `restval_ims.npy`, about 33 GB of memory-mapped region features. `np.concatenate` would copy
    them all into RAM; this view reads only the rows each index asks for from the files.
    """

    def __init__(self, parts: Sequence[np.ndarray]):
        if not parts or any(p.shape[1:] != parts[0].shape[1:] or p.dtype != parts[0].dtype for p in parts):
            raise ValueError(f"need arrays of one dtype and shape[1:], got {[(p.dtype, p.shape) for p in parts]}")
        self.parts = tuple(parts)
        self._starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape: tuple[int, ...] = (int(self._starts[-1]), *parts[0].shape[1:])
        self.dtype: np.dtype = parts[0].dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("several arrays cannot be read as one without a copy")
        return np.concatenate(self.parts, dtype=dtype)

    def __getitem__(self, key: Any) -> Any:
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(rows, slice):
            return self._slice(rows, rest)
        if isinstance(rows, (int, np.integer)):
            i = int(self._valid(np.asarray([operator.index(rows)]))[0])
            p = int(np.searchsorted(self._starts, i, side="right")) - 1
            return self.parts[p][(i - int(self._starts[p]), *rest)]
        ids = np.asarray(rows)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise TypeError(f"rows must be an int, a slice or a 1-D array of ints, got {ids.dtype} of shape {ids.shape}")
        return self._take(self._valid(ids.astype(np.intp)), rest)

    def _valid(self, ids: np.ndarray) -> np.ndarray:
        n = len(self)
        if ((ids < -n) | (ids >= n)).any():
            raise IndexError(f"row {ids[(ids < -n) | (ids >= n)][0]} out of range: {n} rows, valid ids are [-{n}, {n})")
        return np.where(ids < 0, ids + n, ids)

    def _slice(self, rows: slice, rest: tuple) -> Any:
        wanted = range(*rows.indices(len(self)))
        forward = wanted.step > 0
        ascending = wanted if forward else wanted[::-1]
        pieces = []
        for part, start in zip(self.parts, self._starts[:-1].tolist(), strict=True):
            ids = ascending[bisect_left(ascending, start):bisect_left(ascending, start + len(part))]
            if ids:
                piece = part[ids.start - start:ids.stop - start:ids.step]
                pieces.append(piece if forward else piece[::-1])
        if not forward:
            pieces.reverse()
        pieces = [p[(slice(None), *rest)] for p in pieces or [self.parts[0][:0]]]
        return pieces[0] if len(pieces) == 1 else ConcatenatedRows(pieces)

    def _take(self, ids: np.ndarray, rest: tuple) -> np.ndarray:
        which = np.searchsorted(self._starts, ids, side="right") - 1
        out = None
        for p in np.unique(which).tolist():
            at = np.flatnonzero(which == p)
            local, inverse = np.unique(ids[at] - self._starts[p], return_inverse=True)  # sorted: one pass per file
            block = np.asarray(self.parts[p][(local, *rest)])
            if out is None:
                out = np.empty((len(ids), *block.shape[1:]), block.dtype)
            out[at] = block[inverse]
        return out if out is not None else np.asarray(self.parts[0][(ids, *rest)])
