"""Passwords never leave: find a connection's secrets and mask them in text and exceptions.

libpq quotes parts of a connection string it cannot parse in its error messages (``invalid
percent-encoded token: "S3cret%zz"``, or a whole URI), so any text that may come from libpq
passes through :meth:`Secrets.redact` before it reaches a log line, ``stats().last_error`` or a
caller, and an exception raised to a caller through :meth:`Secrets.redacted`.

Pure functions of their arguments: any thread may call them (the dispatcher uses them on its
own thread, the command line on the main thread).
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions

__all__ = ["MASK", "Secrets"]

MASK = "***"
"""What every secret is replaced with."""

# Where a password can be written in a DSN that libpq may fail to parse (and then quote back):
# the userinfo of a URI (up to the first "@", as libpq reads it, and up to the last, as a
# person may mean it), a ``password`` query parameter, and a ``password=`` keyword.
_URI_USERINFO_PASSWORDS = (
    re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*:([^/?#@]*)@"),
    re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*:([^/?#]*)@"),
)
_URI_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#\s]*)")
_URI_LAST_AT = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://[^:@]*:(.*)@")
"""A password written with unescaped ``@``, ``:`` or ``/``: everything up to the last ``@``."""
_URI_DELIMITERS = (re.compile(r"[@:/?#]"), re.compile(r"[@/?#]"))
_FRAGMENT_MIN = 3
"""Pieces of such a password at least this long are masked too: libpq, splitting the URI at
its delimiters, may quote any of them back (as a host name, a port, a database)."""
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'?|\S+)")
_KEYWORD_ESCAPE = re.compile(r"\\(.)")

_E = TypeVar("_E", bound=BaseException)


class Secrets:
    """The secrets of one connection target, and the means to keep them out of text.

    :param dsn: the user's libpq DSN or URI, valid or not (``None``: none).
    :param connect_kwargs: the user's keyword connection parameters (``password`` is a secret).
    """

    def __init__(self, dsn: str | None, connect_kwargs: Mapping[str, Any] | None = None) -> None:
        found = set(_dsn_passwords(dsn or ""))
        password = (connect_kwargs or {}).get("password")
        if password is not None:
            found.update({str(password), urllib.parse.quote(str(password), safe="")})
        found.discard("")
        self._secrets = tuple(sorted(found, key=len, reverse=True))  # longest first

    def __bool__(self) -> bool:
        """``True`` when there is anything to mask."""
        return bool(self._secrets)

    def redact(self, text: str) -> str:
        """Return ``text`` with every form of every secret replaced by :data:`MASK`.

        :param text: any text (a message, a log line).
        :returns: the text, masked; the same text when it holds no secret.
        """
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def leaks(self, exc: BaseException) -> bool:
        """Whether a secret appears in ``exc`` or anything chained to it.

        :param exc: the exception to inspect: its ``str``, ``repr``, ``args`` and notes, and
            those of its ``__cause__`` and ``__context__``, all the way down.
        :returns: ``True`` if any of these texts holds a secret.
        """
        return any(secret in text for text in _texts_of_chain(exc) for secret in self._secrets)

    def redacted(self, exc: _E) -> _E:
        """An exception like ``exc`` that holds no secret, to raise instead of it.

        :param exc: an exception that may quote a secret (e.g. libpq's ``invalid dsn: ...``).
        :returns: ``exc`` itself when neither it nor its chain holds a secret; else a new
            exception of the same type, with the traceback of ``exc``, its ``args`` (and so its
            message) masked, its ``__cause__`` a redacted copy of the original cause, and no
            ``__context__`` (as if raised ``from`` that cause, or ``from None``).
        """
        if not self._secrets or not self.leaks(exc):
            return exc
        return self._copy(exc)

    def _copy(self, exc: _E) -> _E:
        args = tuple(self._masked_arg(arg) for arg in exc.args)
        try:
            copy = type(exc)(*args)
        except Exception:  # a constructor taking other parameters: skip it, keep the type
            copy = type(exc).__new__(type(exc), *args)
        copy.args = args
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list):
            vars(copy)["__notes__"] = [self.redact(str(note)) for note in notes]  # 3.11+
        cause = exc.__cause__
        copy.__cause__ = None if cause is None else self.redacted(cause)
        copy.__context__ = None
        copy.__suppress_context__ = True
        if self.leaks(copy):  # a __str__ of its own, built from state we cannot reach
            copy = type(exc).__new__(type(exc), MASK)
            copy.args = (f"{type(exc).__name__} (message withheld: it quoted a password)",)
        return copy.with_traceback(exc.__traceback__)

    def _masked_arg(self, arg: object) -> object:
        if isinstance(arg, str):
            return self.redact(arg)
        if any(secret in repr(arg) for secret in self._secrets):
            return self.redact(repr(arg))
        return arg


def _dsn_passwords(dsn: str) -> Iterator[str]:
    """Every form in which the password of ``dsn`` could be quoted back (none if it has none).

    ``parse_dsn`` finds it in a valid DSN; a malformed one is searched with tolerant patterns.
    """
    with contextlib.suppress(psycopg2.ProgrammingError):
        yield psycopg2.extensions.parse_dsn(dsn).get("password", "")
    for pattern in (*_URI_USERINFO_PASSWORDS, _URI_QUERY_PASSWORD):
        for match in pattern.finditer(dsn):
            yield match.group(1)
            yield urllib.parse.unquote(match.group(1))
    last_at = _URI_LAST_AT.match(dsn)
    if last_at is not None:
        written = last_at.group(1)
        pieces = {written}.union(*(set(split.split(written)) for split in _URI_DELIMITERS))
        for piece in sorted(pieces):
            if len(piece) >= _FRAGMENT_MIN:
                yield piece
                yield urllib.parse.unquote(piece)
    for match in _KEYWORD_PASSWORD.finditer(dsn):
        written = match.group(1)
        yield written
        if written.startswith("'"):
            inner = written[1:-1] if len(written) > 1 and written.endswith("'") else written[1:]
            yield inner
            yield _KEYWORD_ESCAPE.sub(r"\1", inner)


def _texts_of_chain(exc: BaseException) -> Iterator[str]:
    """The texts of ``exc`` and of every exception chained to it (each visited once)."""
    seen: set[int] = set()
    waiting: list[BaseException] = [exc]
    while waiting:
        current = waiting.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for text_of in (str, repr):
            with contextlib.suppress(Exception):
                yield text_of(current)
        for arg in current.args:
            with contextlib.suppress(Exception):
                yield arg if isinstance(arg, str) else repr(arg)
        for note in getattr(current, "__notes__", None) or ():
            yield str(note)
        waiting.extend(link for link in (current.__cause__, current.__context__) if link)
