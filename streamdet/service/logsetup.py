"""Logging for people and for journald: one record, one line."""
from __future__ import annotations

import logging
import os
import sys


class OneLineFormatter(logging.Formatter):
    """One record, one line: tracebacks and multi-line messages are folded, so journald and
    line-based log shippers never split a record."""

    JOURNAL_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}

    def __init__(self, journal: bool):
        # Under systemd the journal adds the time; a <N> prefix carries the priority.
        fmt = "<%(priority)d>%(name)s: %(message)s" if journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(fmt, datefmt="%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.priority = self.JOURNAL_PRIORITY.get(record.levelname, 6)
        return " | ".join(line for line in super().format(record).splitlines() if line.strip())


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
