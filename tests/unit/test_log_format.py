"""What an operator's log shipper reads from a `discount` process (logs.py): one line per event,
even for an event that carries a traceback."""

from __future__ import annotations

import logging
import sys

from discount_service.logs import OneLineFormatter


def test_an_event_with_a_traceback_is_one_line() -> None:
    formatter = OneLineFormatter("%(levelname)s %(name)s %(message)s")
    try:
        raise RuntimeError("the pool is closed")
    except RuntimeError:
        record = logging.LogRecord("discount_service", logging.ERROR, __file__, 1, "claim\nfailed", (), sys.exc_info())
    line = formatter.format(record)
    assert "\n" not in line
    assert line.startswith("ERROR discount_service claim | failed | Traceback (most recent call last): | ")
    assert line.endswith("RuntimeError: the pool is closed")
