"""Progress bars that suit where they go: tqdm's live bar on a terminal; in a log (docker logs,
CI, a file) a whole line every `LOG_INTERVAL_S` seconds, and none of tqdm's carriage returns,
which made a demo zoo build write over 200 kB of bar redraws to a log."""
from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 10.0


class LogLines(tqdm):
    """tqdm that writes a plain line per update (at most one every mininterval seconds)."""

    _printed_at: float | None = None
    _last_n = -1

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", float("inf"))
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> None:
        now = time.monotonic()
        # msg "": tqdm closing (it would clear its line); in a log, say where it ended instead
        finished = msg == "" or (self.total is not None and self.n >= self.total)
        # set_postfix refreshes on every step, with a count tqdm syncs only at its own updates: print
        # the first line, then only when the count moved, at most once an interval, and the last
        if self._printed_at is not None:
            if self._last_n == self.n or (not finished and now - self._printed_at < self.mininterval):
                return
        self._printed_at, self._last_n = now, self.n
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """tqdm(*args, **kwargs) on a terminal, LogLines elsewhere."""
    stream = kwargs.get("file") or sys.stderr
    isatty = getattr(stream, "isatty", lambda: False)
    return (tqdm if isatty() else LogLines)(*args, **kwargs)
