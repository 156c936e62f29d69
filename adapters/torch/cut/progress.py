"""Progress of slow work (the cut of many layers, H-infinity certificates): silent unless it takes a while."""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["Progress"]

logger = logging.getLogger("adapters.torch")

#: Work that has run this long (seconds) starts showing progress.
_PROGRESS_AFTER_S = 2.0


class Progress:
    """Progress of ``total`` units of work: silent for the first :data:`_PROGRESS_AFTER_S` seconds.

    After that, a tqdm bar on a terminal (``sys.stderr.isatty()`` and tqdm importable), otherwise
    ``logging`` INFO lines on the ``"adapters.torch"`` logger (at most one per 2 s, and one at the end).
    ``enabled=False``: nothing at all.
    """

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total, self.desc, self.enabled = int(total), desc, bool(enabled)
        self.done, self.start, self.bar, self.last_log = 0, time.perf_counter(), None, None

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.bar is None and self.last_log is None and now - self.start < _PROGRESS_AFTER_S:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        if self.last_log is None and _use_tqdm():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, initial=self.done, leave=False)
            return
        if self.last_log is None or now - self.last_log >= _PROGRESS_AFTER_S or self.done >= self.total:
            self.last_log = now
            logger.info("%s: %d/%d (%.1f s)", self.desc, self.done, self.total, now - self.start)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _use_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())
