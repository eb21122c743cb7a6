"""Progress of long work: a tqdm bar on a terminal; in a log (CI, nohup, a cluster's log file) a line
at most every LOG_INTERVAL_S seconds with done/total, rate and time left, so long work never goes silent."""
from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("itr_distill")
LOG_INTERVAL_S = 30.0


class _LoggedProgress(tqdm):
    """A tqdm whose refreshes are log lines; loops shorter than the interval log nothing. No monitor
    thread: it would refresh between iterations with a stale count."""

    monitor_interval = 0
    _logged_at: float | None = None

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs: Any) -> None:
        """Shown with the next periodic line: a refresh now would log a stale count."""
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        now = self._time()
        last = getattr(self, "start_t", now) if self._logged_at is None else self._logged_at
        # tqdm clears a closed bar with an empty message
        if msg != "" and now - last >= LOG_INTERVAL_S:
            self._logged_at = now
            log.info("%s", self.format_meter(**self.format_dict).strip())
        return True


def progress(iterable: Iterable, desc: str, enabled: bool = True, **kwargs: Any) -> tqdm:
    """tqdm over `iterable`: a bar on a terminal, periodic log lines otherwise, nothing if not `enabled`."""
    if not enabled:
        return tqdm(iterable, desc=desc, disable=True, **kwargs)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, **kwargs)
    return _LoggedProgress(iterable, desc=desc, leave=False, mininterval=LOG_INTERVAL_S, delay=LOG_INTERVAL_S,
                           ascii=True, ncols=100, **kwargs)
