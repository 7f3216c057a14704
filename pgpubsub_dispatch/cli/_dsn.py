"""Which DSN a command uses, how its target is described, and its password kept out of output.

The masking itself is the library's (:mod:`pgpubsub_dispatch._secrets`); this module applies it
to the command line's messages and to the library's log shown with ``-v``. Runs on the main
thread; the log formatter also runs on whichever thread logs (the dispatcher's).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping

import psycopg2
import psycopg2.extensions

from .._secrets import Secrets
from ._common import PROG, CommandError, one_line

__all__ = [
    "DSN_ENVIRON",
    "check_dsn",
    "library_logging",
    "redact",
    "resolve_dsn",
]

DSN_ENVIRON = "DATABASE_URL"
"""Environment variable holding the DSN when ``--dsn`` is not given."""


def resolve_dsn(option: str | None, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Choose the DSN: ``--dsn``, else ``$DATABASE_URL``, else libpq's environment.

    :param option: the value of ``--dsn``, ``None`` when not given (an empty string is a choice:
        libpq's environment).
    :param environ: the environment to read; ``None`` means ``os.environ``.
    :returns: ``(dsn, source)``: the DSN for ``psycopg2.connect`` (``""`` lets libpq read
        ``PGHOST``, ``PGDATABASE``, ...) and where it came from, for messages: ``"--dsn"``,
        ``"DATABASE_URL"`` or ``"libpq environment"``.
    """
    env = os.environ if environ is None else environ
    if option is not None:
        return option, "--dsn"
    from_env = env.get(DSN_ENVIRON)
    if from_env:
        return from_env, DSN_ENVIRON
    return "", "libpq environment"


def redact(message: str, dsn: str) -> str:
    """Return ``message`` with every trace of the password of ``dsn`` replaced by ``***``.

    libpq echoes parts of a malformed DSN in its errors (``invalid percent-encoded token:
    "s3cret%zz"``, a whole URI), so every message that may quote the DSN passes through here.

    :param message: text about to be shown.
    :param dsn: the DSN in use, valid or not.
    :returns: the text, with the password (as parsed, and as written in the DSN) masked.
    """
    return Secrets(dsn).redact(message)


def check_dsn(dsn: str, source: str) -> None:
    """Reject a malformed DSN before any thread starts, naming where it came from.

    :raises CommandError: when libpq cannot parse ``dsn`` (the message is masked later).
    """
    try:
        psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        reason = one_line(str(exc)).removeprefix("invalid dsn: ")
        raise CommandError(f"invalid connection string (from {source}): {reason}") from exc


class _Redacting(logging.Formatter):
    """``pgpubsub-dispatch: <level>: <message>``, with the DSN's password masked."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._secrets = Secrets(dsn)

    def format(self, record: logging.LogRecord) -> str:
        text = f"{PROG}: {record.levelname.lower()}: {super().format(record)}"
        return self._secrets.redact(text)


@contextlib.contextmanager
def library_logging(verbosity: int, dsn: str) -> Iterator[None]:
    """Show the ``pgpubsub_dispatch`` log on stderr for the block, passwords masked.

    By default only errors (a bug in the library): the commands report connection failures
    themselves, in one line, and the library's warnings about them would repeat it. ``-v``
    shows info, ``-vv`` debug. The logger's previous level is restored afterwards.

    :param verbosity: how many ``-v`` were given.
    :param dsn: the DSN in use, whose password is masked in every line.
    """
    level = {0: logging.ERROR, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logger = logging.getLogger("pgpubsub_dispatch")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Redacting(dsn))
    handler.setLevel(level)
    previous = logger.level
    if verbosity:
        logger.setLevel(level)
    logger.addHandler(handler)  # also keeps logging's last-resort stderr handler quiet
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
