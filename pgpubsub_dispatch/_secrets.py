"""Keeping passwords out of every message: the secrets of one connection target.

Any thread; immutable after construction.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, TypeVar

import psycopg2.extensions

__all__ = ["Secrets"]

E = TypeVar("E", bound=BaseException)

_MASK = "********"
_URI_PASSWORD = re.compile(r"^[a-z]+://[^:/@?#]*:([^@/?#]*)@", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")
_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)", re.IGNORECASE)


class Secrets:
    """The password texts of a DSN and keywords, and how to mask them.

    :param dsn: the user's libpq DSN or URI (parsed tolerantly: a malformed one still has its
        password found), or ``None``.
    :param connect_kwargs: the user's keyword parameters (``password`` among them).
    """

    def __init__(self, dsn: str | None, connect_kwargs: dict[str, Any]) -> None:
        found: set[str] = set()
        password = connect_kwargs.get("password")
        if password:
            found.add(str(password))
        if dsn:
            found.update(_passwords_in(dsn))
        self._texts = sorted((text for text in found if text), key=len, reverse=True)

    def redact(self, text: str) -> str:
        """Return ``text`` with every password (raw or percent-encoded) replaced by a mask."""
        for secret in self._texts:
            text = text.replace(secret, _MASK)
        return text

    def scrub(self, error: E) -> E:
        """Return ``error`` itself if it holds no password, else a copy of it that does not.

        The copy has the same type when that type can be built from one message (psycopg2's
        errors can), else is a ``RuntimeError``; its cause is the scrubbed cause, never the
        original text.
        """
        message = str(error)
        cleaned = self.redact(message)
        cause = error.__cause__ or error.__context__
        if cleaned == message and (cause is None or self.scrub(cause) is cause):
            return error
        try:
            copy: BaseException = type(error)(cleaned)
        except Exception:
            copy = RuntimeError(cleaned)
        copy.__cause__ = None if cause is None else self.scrub(cause)
        copy.__suppress_context__ = True
        return copy  # type: ignore[return-value]


def _passwords_in(dsn: str) -> set[str]:
    found: set[str] = set()
    try:
        password = psycopg2.extensions.parse_dsn(dsn).get("password")
        if password:
            found.add(password)
    except psycopg2.ProgrammingError:
        pass  # malformed: look with the patterns below
    for pattern in (_URI_PASSWORD, _KEYWORD_PASSWORD, _QUERY_PASSWORD):
        for match in pattern.finditer(dsn):
            raw = match.group(1).strip("'")
            if raw:
                found.add(raw)
                found.add(urllib.parse.unquote(raw))
    return found
