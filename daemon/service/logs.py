"""The daemon's own log lines through stdlib `logging`: to journald with their priority
(systemd.journal.JournalHandler) when stderr is journald's stream, else to stderr as
`sysdream: MESSAGE` (a terminal, a test, a container's log); a child logger's lines as
`sysdream server: MESSAGE` (the fleet's server and workers: fleet/). `[service] log_level`
picks what is written; alerts never go through here (alerting/sinks.py carries them).
"""

from __future__ import annotations

import logging
import os
import sys

LOGGER = logging.getLogger("sysdream")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def under_journald(env: dict | None = None) -> bool:
    """Whether stderr is the stream systemd connected to journald ($JOURNAL_STREAM names
    its device and inode, systemd.exec(5)); a redirected stderr is not."""
    env = os.environ if env is None else env
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return dev.isdigit() and ino.isdigit() and (st.st_dev, st.st_ino) == (int(dev), int(ino))


class _Stderr(logging.Handler):
    """One line each on stderr, through the learning progress bar while it is drawn."""

    def emit(self, record: logging.LogRecord) -> None:
        from ..training.progress import LearningBar

        try:
            line = f"{record.name.replace('.', ' ')}: {self.format(record)}"
            if LearningBar.active is not None:
                LearningBar.active.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)
        except Exception:      # noqa: BLE001 - logging must never stop the daemon
            self.handleError(record)


def setup(level: str = "info") -> logging.Handler:
    """Route LOGGER to journald or stderr at `level` (one of LEVELS); again at a reload."""
    handler: logging.Handler
    if under_journald():
        from systemd.journal import JournalHandler
        handler = JournalHandler(SYSLOG_IDENTIFIER="sysdream")
    else:
        handler = _Stderr()
    for old in list(LOGGER.handlers):
        LOGGER.removeHandler(old)
    LOGGER.addHandler(handler)
    LOGGER.setLevel(LEVELS[level])
    LOGGER.propagate = False
    return handler


def log(msg: str, level: int = logging.INFO, logger: logging.Logger = LOGGER) -> None:
    """`msg` at `level` through LOGGER or a child of it (LOGGER.getChild("server"))."""
    if not LOGGER.handlers:
        setup()
    logger.log(level, msg)


def warn(msg: str) -> None:
    log(msg, logging.WARNING)
