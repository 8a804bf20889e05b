"""A progress line for long jobs: done / total, rate, ETA and failures so far.

On a terminal it is one line redrawn in place (at most five times a second); elsewhere (a log file, a Ray
job's log, CI) it is a plain log line every `log_every_s`, so logs stay readable. Training and evaluation
jobs use it too.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

logger = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


class ProgressLine:
    """`update(done, failed)` as work completes; `close()` once at the end."""

    def __init__(
        self,
        total: int,
        unit: str = "clips",
        label: str = "tokenize",
        failed_label: str | None = "quarantined",
        stream: TextIO | None = None,
        tty: bool | None = None,
        log_every_s: float = 10.0,
        enabled: bool = True,
    ) -> None:
        self.total, self.unit, self.label, self.failed_label = total, unit, label, failed_label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.log_every_s = log_every_s
        self.enabled = enabled
        self.started = time.perf_counter()
        self.first_at: float | None = None
        self._first_done = 0
        self.done = self.failed = 0
        self.note = ""
        """Free text shown after the counts (a training loss, say)."""
        self._last_draw = -1.0
        self._last_log = self.started
        self._width = 0

    def text(self, now: float | None = None) -> str:
        """The line as it would be shown now."""
        now = time.perf_counter() if now is None else now
        elapsed = now - self.started
        pct = f" {100 * self.done / self.total:3.0f}%" if self.total else ""
        line = f"{self.label}  {self.done:,}/{self.total:,} {self.unit}{pct}"
        if self.done and self.first_at is not None:
            # Rate from the first result on: start-up (workers, model load) is not throughput.
            span = now - self.first_at
            rate = (self.done - self._first_done) / span if span > 0 and self.done > self._first_done else 0.0
            line += f"  {rate:.2f} {self.unit}/s" if rate else ""
            if rate and self.total > self.done:
                line += f"  ETA {_duration((self.total - self.done) / rate)}"
        else:
            line += f"  starting workers ({_duration(elapsed)})"
        if self.failed_label:
            line += f"  {self.failed_label} {self.failed:,}"
        if self.note:
            line += f"  {self.note}"
        line += f"  elapsed {_duration(elapsed)}"
        return line

    def update(self, done: int, failed: int = 0) -> None:
        now = time.perf_counter()
        if done and self.first_at is None:
            # A resumed job starts part way: its rate counts from where it started, not from 0.
            self.first_at, self._first_done = now, done
        self.done, self.failed = done, failed
        if not self.enabled:
            return
        if self.tty:
            if now - self._last_draw >= 0.2 or done == self.total:
                self._draw(self.text(now))
                self._last_draw = now
        elif now - self._last_log >= self.log_every_s:
            logger.info("%s", self.text(now))
            self._last_log = now

    def close(self) -> None:
        if not self.enabled:
            return
        text = self.text()
        if self.tty:
            self._draw(text)
            self.stream.write("\n")
            self.stream.flush()
        else:
            logger.info("%s", text)

    def _draw(self, text: str) -> None:
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)
