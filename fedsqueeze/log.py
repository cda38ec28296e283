"""The ``fedsqueeze`` logger and the two forms its records take on the ServerApp's output.

Every progress message of a run (round lines, warnings, the final result) is a
``logging`` record of the ``fedsqueeze`` logger (modules use child loggers,
:func:`get_logger`). The ServerApp installs one handler on its standard
output (:func:`configure`), in one of two forms:

``human`` (the default, e.g. under ``flwr run . --stream``)
    ``[fedsqueeze] <message>``; warnings and errors name their level:
    ``[fedsqueeze] WARNING: <message>``.
``records`` (``FEDSQUEEZE_LOG_FORMAT=records``; ``simulations.run`` sets it)
    one line per record, a JSON object (pure ASCII) with the schema key
    ``"fedsqueeze": 1``, the level, the message and the record's event fields
    (e.g. ``event="round"``, ``round=3``). Flower streams the ServerApp's
    output to ``flwr run --stream`` unchanged; the runner picks these records
    out of it with :func:`parse_record`, which accepts only a whole line that
    parses as a record of this schema, so no other program's output (text
    that merely looks like a progress line included) is taken for one, and
    the runner reads the round number from a field, not from the text.
    (No control character marks a record: ``str.splitlines`` would split a
    line at an RFC 7464 record separator.)

Events: pass ``extra=event("round", round=3, phase="train")`` to a logging
call; the ``human`` form ignores the fields, the ``records`` form carries them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["LOGGER_NAME", "LOG_FORMAT_ENV", "HUMAN", "RECORDS", "get_logger", "event", "configure", "render",
           "parse_record", "HumanFormatter", "RecordFormatter"]

LOGGER_NAME = "fedsqueeze"
#: Environment variable choosing the form of the ServerApp's log lines (``human`` | ``records``).
LOG_FORMAT_ENV = "FEDSQUEEZE_LOG_FORMAT"
HUMAN, RECORDS = "human", "records"

_SCHEMA = 1  # value of the "fedsqueeze" key of a record; bump when its fields change meaning
_EVENT_ATTR = "fedsqueeze_event"  # LogRecord attribute that carries the event fields


def get_logger(module: str) -> logging.Logger:
    """The logger of a project module, a child of ``fedsqueeze`` (so one handler serves all).

    Parameters
    ----------
    module : str
        The module's ``__name__``, e.g. ``server.federation`` → ``fedsqueeze.server.federation``.
    """
    if module == LOGGER_NAME or module.startswith(LOGGER_NAME + "."):
        return logging.getLogger(module)
    return logging.getLogger(f"{LOGGER_NAME}.{module}")


def event(name: str, **fields: Any) -> dict[str, Any]:
    """The ``extra`` argument of a logging call that marks it as event ``name`` with ``fields``.

    Fields must be JSON values (str, int, float, bool, None).
    """
    return {_EVENT_ATTR: {"event": name, **fields}}


def render(level: str, message: str) -> str:
    """The human form of a message: ``[fedsqueeze] message``, with the level from WARNING up."""
    levelno = logging.getLevelName(level)
    shown = f"{level}: " if isinstance(levelno, int) and levelno >= logging.WARNING else ""
    return f"[{LOGGER_NAME}] {shown}{message}"


class HumanFormatter(logging.Formatter):
    """``[fedsqueeze] <message>`` (see :func:`render`); a traceback, if any, follows."""

    def format(self, record: logging.LogRecord) -> str:
        text = render(record.levelname, record.getMessage())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class RecordFormatter(logging.Formatter):
    """One JSON object per record: ``{"fedsqueeze": 1, "level": ..., "logger": ..., "message": ..., <event fields>}``.

    The record is pure ASCII (``json.dumps`` escapes the rest) and on one line
    (a traceback goes into the ``message`` string).
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        fields = getattr(record, _EVENT_ATTR, None) or {}
        body = {"fedsqueeze": _SCHEMA, "level": record.levelname, "logger": record.name, "message": message,
                **{k: v for k, v in fields.items() if k not in ("fedsqueeze", "level", "logger", "message")}}
        return json.dumps(body, default=str)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at emit time.

    Flower mirrors the ServerApp's output to the log stream by patching
    ``sys.stdout.write`` (and tests swap ``sys.stdout``), so the stream is
    looked up per record rather than captured once.
    """

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stdout)
        super().emit(record)


def configure(form: str | None = None) -> logging.Logger:
    """Send the ``fedsqueeze`` logger's records to standard output in ``form`` (idempotent).

    Parameters
    ----------
    form : {"human", "records"}, optional
        Default: ``$FEDSQUEEZE_LOG_FORMAT``, else ``human``.

    Returns
    -------
    logging.Logger
        The ``fedsqueeze`` logger (level INFO, not propagating to the root
        logger, so nothing is printed twice).

    Raises
    ------
    ValueError
        ``form`` (or the environment variable) names no known form.
    """
    form = form or os.environ.get(LOG_FORMAT_ENV) or HUMAN
    if form not in (HUMAN, RECORDS):
        raise ValueError(f"{LOG_FORMAT_ENV}={form!r}: expected {HUMAN!r} or {RECORDS!r}")
    logger = logging.getLogger(LOGGER_NAME)
    for old in [h for h in logger.handlers if isinstance(h, _StdoutHandler)]:
        logger.removeHandler(old)
    handler = _StdoutHandler()
    handler.setFormatter(RecordFormatter() if form == RECORDS else HumanFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def parse_record(line: str) -> Mapping[str, Any] | None:
    """The fields of a ``records``-form line, or None if ``line`` is not one.

    A record is a whole line holding one JSON object with ``"fedsqueeze": 1``
    and string ``level`` and ``message`` fields; anything else (other
    programs' output, a garbled or partial line) is None.
    """
    if not line.lstrip().startswith("{"):  # only a shortcut: most lines are not JSON at all
        return None
    try:
        body = json.loads(line)
    except ValueError:
        return None
    if (not isinstance(body, dict) or body.get("fedsqueeze") != _SCHEMA
            or not isinstance(body.get("level"), str) or not isinstance(body.get("message"), str)):
        return None
    return body
