"""Connection parameters: libpq TCP keepalives by default, timeouts, a printable target.

Pure functions of their arguments (and of ``os.environ``), called from any thread.

The keepalive parameters are libpq's (see "Parameter Key Words" in the libpq documentation);
they only apply to TCP connections and are ignored for Unix sockets.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any

import psycopg2
import psycopg2.extensions

__all__ = [
    "LIVENESS_DEFAULTS",
    "attempt_timeout",
    "describe_target",
    "given_client_encoding",
    "host_alternatives",
    "with_liveness",
]

LIVENESS_DEFAULTS: dict[str, str] = {
    "keepalives": "1",
    "keepalives_idle": "10",  # seconds of silence before the first probe
    "keepalives_interval": "5",  # seconds between probes
    "keepalives_count": "3",  # unanswered probes before the kernel drops the connection
}
"""TCP keepalive parameters set on every connection unless the DSN or keywords give them."""

PINNED_CLIENT_ENCODING = "UTF8"
"""The dispatcher's own sessions always use this ``client_encoding`` (see :func:`with_liveness`)."""

TCP_USER_TIMEOUT_MS = "30000"
"""``tcp_user_timeout`` (milliseconds unacknowledged data may wait) where libpq supports it."""

DEFAULT_ATTEMPT_SECONDS = 10.0
"""Time allowed for one connection attempt when no ``connect_timeout`` is given."""


def _dsn_params(dsn: str | None) -> dict[str, str]:
    if not dsn:
        return {}
    try:
        return dict(psycopg2.extensions.parse_dsn(dsn))
    except psycopg2.ProgrammingError:
        return {}  # psycopg2.connect reports a malformed DSN itself, with libpq's words


def with_liveness(dsn: str | None, connect_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return ``connect_kwargs`` plus the keepalive defaults the caller did not set, and
    ``client_encoding=UTF8``.

    :param dsn: the libpq DSN or URI given by the user (may be ``None``).
    :param connect_kwargs: the keyword parameters given by the user.
    :returns: a new dict; the user's own values win, except ``client_encoding``, which is
        always ``UTF8`` (names and payloads then round-trip whatever the user gave).
    """
    given = set(_dsn_params(dsn)) | set(connect_kwargs)
    merged = dict(connect_kwargs)
    defaults = dict(LIVENESS_DEFAULTS)
    if psycopg2.extensions.libpq_version() >= 120000:
        defaults["tcp_user_timeout"] = TCP_USER_TIMEOUT_MS
    for key, value in defaults.items():
        if key not in given:
            merged[key] = value
    # Always, whatever the DSN, keywords or PGCLIENTENCODING say: psycopg2 quotes identifiers
    # as UTF-8 text, so a session in another client encoding would LISTEN to mojibake.
    merged["client_encoding"] = PINNED_CLIENT_ENCODING
    return merged


def given_client_encoding(dsn: str | None, connect_kwargs: Mapping[str, Any]) -> str | None:
    """The ``client_encoding`` the user asked for (keywords, DSN, then ``PGCLIENTENCODING``),
    or ``None`` when it is UTF-8 anyway or not given."""
    value = connect_kwargs.get("client_encoding")
    if value is None:
        value = _dsn_params(dsn).get("client_encoding") or os.environ.get("PGCLIENTENCODING")
    if value is None:
        return None
    text = str(value)
    return None if text.upper().replace("-", "").replace("_", "") in ("UTF8", "UNICODE") else text


def host_alternatives(
    dsn: str | None, connect_kwargs: dict[str, Any]
) -> list[tuple[str | None, dict[str, Any]]]:
    """Split a multi-host target into one ``(dsn, kwargs)`` per host, in libpq's order.

    libpq enforces ``connect_timeout`` per host, but not for asynchronous connections, where
    one host that never answers would hold the whole attempt. Trying hosts one by one, each
    with its own deadline, keeps failover working when a server hangs rather than refuses.
    ``load_balance_hosts=random`` shuffles them, as libpq would.

    :param dsn: the user's DSN or URI, or ``None``.
    :param connect_kwargs: the keyword parameters (they win over the DSN).
    :returns: ``[(dsn, connect_kwargs)]`` unchanged for a single host (or a DSN that does not
        parse: libpq will report it); else one entry per host, each all-keyword.
    """
    from_dsn = _dsn_params(dsn)
    params = {**from_dsn, **{key: str(value) for key, value in connect_kwargs.items()}}
    hosts = params.get("host", "").split(",")
    hostaddrs = params.get("hostaddr", "").split(",")
    count = max(len(hosts), len(hostaddrs))
    if count <= 1 or (dsn and not from_dsn):
        return [(dsn, connect_kwargs)]
    ports = params.get("port", "").split(",")
    alternatives: list[tuple[str | None, dict[str, Any]]] = []
    for index in range(count):
        single = dict(params)
        for key, values in (("host", hosts), ("hostaddr", hostaddrs), ("port", ports)):
            if key in params:
                single[key] = values[index] if len(values) > 1 else values[0]
            if single.get(key) == "":
                del single[key]
        alternatives.append((None, single))
    if params.get("load_balance_hosts") == "random":
        random.shuffle(alternatives)
    return alternatives


def attempt_timeout(dsn: str | None, connect_kwargs: dict[str, Any]) -> float:
    """Seconds one connection attempt may take: ``connect_timeout`` if given, else 10.

    libpq does not enforce ``connect_timeout`` for asynchronous connections; the dispatcher
    enforces it with this value. ``0`` or a negative value means the default.
    """
    value = connect_kwargs.get("connect_timeout", _dsn_params(dsn).get("connect_timeout"))
    try:
        seconds = float(value) if value is not None else 0.0
    except ValueError:
        seconds = 0.0
    return seconds if seconds > 0 else DEFAULT_ATTEMPT_SECONDS


_TARGET_PARAMETERS = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "service": "PGSERVICE",
}


def describe_target(
    dsn: str | None,
    connect_kwargs: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Where libpq will connect, as ``host=... port=... dbname=... user=...``: never a password.

    The one description of a target, for log lines, exception messages and the command line.

    :param dsn: the user's DSN or URI (``None`` or ``""``: none; a malformed one counts as none).
    :param connect_kwargs: keyword connection parameters; they win over the DSN.
    :param environ: libpq's environment (``PGHOST``, ...), used for what neither gives;
        ``None`` means ``os.environ``.
    :returns: the ``host``, ``hostaddr``, ``port``, ``dbname``, ``user`` and ``service`` libpq
        will use, or ``"libpq's defaults"`` when none is known.
    """
    env = os.environ if environ is None else environ
    given = {**_dsn_params(dsn), **{k: str(v) for k, v in (connect_kwargs or {}).items()}}
    words = []
    for name, variable in _TARGET_PARAMETERS.items():
        value = given.get(name) or env.get(variable)
        if value:
            words.append(f"{name}={value}")
    return " ".join(words) or "libpq's defaults"
