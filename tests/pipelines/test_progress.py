"""The progress line: what it says, redrawn in place on a terminal, periodic log lines elsewhere."""

from __future__ import annotations

import io
import logging

import pytest

from pipelines.progress import ProgressLine


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_says_done_total_rate_eta_and_failures() -> None:
    line = ProgressLine(100, stream=io.StringIO(), tty=False)
    assert "0/100 clips" in line.text() and "starting workers" in line.text()
    line.started, line.first_at, line._first_done = 0.0, 10.0, 1
    line.done, line.failed = 21, 2
    # 20 clips in the 10 s since the first one: 2 clips/s, 79 left -> 40 s.
    assert line.text(now=20.0) == "tokenize  21/100 clips  21%  2.00 clips/s  ETA 40 s  quarantined 2  elapsed 20 s"


def test_on_a_terminal_it_redraws_one_line() -> None:
    stream = _Tty()
    line = ProgressLine(3, stream=stream)
    for done in range(4):
        line.update(done)
        line._last_draw = -1.0  # as if 0.2 s had passed between clips
    line.close()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r") == 5 and "3/3 clips 100%" in text.rsplit("\r", 1)[1]


def test_elsewhere_it_logs_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    line = ProgressLine(10, stream=stream, tty=False, log_every_s=0.0)
    with caplog.at_level(logging.INFO, logger="pipelines.progress"):
        line.update(1)
        line.update(2, failed=1)
        line.close()
    assert stream.getvalue() == ""
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and "2/10 clips" in messages[1] and "quarantined 1" in messages[1]


def test_disabled_prints_nothing(caplog: pytest.LogCaptureFixture) -> None:
    stream = _Tty()
    line = ProgressLine(2, stream=stream, enabled=False)
    with caplog.at_level(logging.INFO):
        line.update(1)
        line.close()
    assert stream.getvalue() == "" and not caplog.records
