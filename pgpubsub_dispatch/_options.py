"""The dispatcher's own options, checked once at construction; read-only afterwards.

Built by ``Dispatcher.__init__`` in the caller's thread and never changed, so any thread may
read it without a lock.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from concurrent.futures import Executor
from typing import Any

from ._connection import (
    PINNED_CLIENT_ENCODING,
    attempt_timeout,
    describe_target,
    given_client_encoding,
    host_alternatives,
    with_liveness,
)
from ._secrets import Secrets

__all__ = ["MAX_INTERVAL_SECONDS", "Options"]

MAX_INTERVAL_SECONDS = 86_400.0
"""The longest heartbeat interval, heartbeat timeout or reconnection delay accepted: one day."""

log = logging.getLogger("pgpubsub_dispatch")

_RESERVED_KWARGS = frozenset({"async", "async_", "connection_factory"})


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything a dispatcher was configured with (see :class:`Dispatcher` for meanings)."""

    dsn: str | None
    connect_kwargs: dict[str, Any]
    alternatives: list[tuple[str | None, dict[str, Any]]]
    target: str
    attempt_seconds: float
    secrets: Secrets
    reconnect: bool
    backoff_min: float
    backoff_max: float
    heartbeat_interval: float | None
    heartbeat_timeout: float
    executor: Executor | None
    max_pending: int
    queue_warning: float

    @classmethod
    def build(
        cls,
        dsn: str | None,
        connect_kwargs: dict[str, Any],
        *,
        reconnect: bool,
        backoff_min: float,
        backoff_max: float,
        heartbeat_interval: float | None,
        heartbeat_timeout: float,
        executor: Executor | None,
        max_pending: int,
        queue_warning: float,
    ) -> Options:
        """Check every option and derive the connection parameters.

        :raises TypeError: for a ``dsn`` that is not a ``str`` or ``None``, a reserved
            keyword, an option of the wrong type, or an ``executor`` that is not an Executor.
        :raises ValueError: for an option out of its range (see :class:`Dispatcher`).
        """
        if "dsn" in connect_kwargs:  # psycopg2.connect(dsn=...) works: so does this
            if dsn is not None:
                raise TypeError("dsn given both by position and by keyword")
            dsn = connect_kwargs.pop("dsn")
        if dsn is not None and not isinstance(dsn, str):
            raise TypeError(f"dsn must be a str or None, not {type(dsn).__name__}")
        reserved = _RESERVED_KWARGS.intersection(connect_kwargs)
        if reserved:
            raise TypeError(f"the dispatcher sets {', '.join(sorted(reserved))} itself")
        for name, value in [
            ("backoff_min", backoff_min),
            ("backoff_max", backoff_max),
            ("heartbeat_timeout", heartbeat_timeout),
            ("heartbeat_interval", 1.0 if heartbeat_interval is None else heartbeat_interval),
        ]:
            _check_seconds(name, value)
        if backoff_min > backoff_max:
            raise ValueError(f"backoff_min ({backoff_min}) exceeds backoff_max ({backoff_max})")
        if executor is not None and not isinstance(executor, Executor):
            raise TypeError(f"executor must be a concurrent.futures.Executor, not {executor!r}")
        if not _is_number(queue_warning) or not 0 < queue_warning <= 1:
            raise ValueError(f"queue_warning must be a fraction in (0, 1], not {queue_warning!r}")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be a positive int, not {max_pending!r}")
        asked = given_client_encoding(dsn, connect_kwargs)
        if asked is not None:
            log.info(
                "client_encoding %s is not used: the dispatcher's own session is pinned to %s, "
                "so channel names and payloads round-trip exactly (the server converts)",
                asked,
                PINNED_CLIENT_ENCODING,
            )
        return cls(
            dsn=dsn,
            connect_kwargs=with_liveness(dsn, dict(connect_kwargs)),
            alternatives=host_alternatives(dsn, with_liveness(dsn, dict(connect_kwargs))),
            target=describe_target(dsn, connect_kwargs),
            attempt_seconds=attempt_timeout(dsn, connect_kwargs),
            secrets=Secrets(dsn, connect_kwargs),
            reconnect=bool(reconnect),
            backoff_min=float(backoff_min),
            backoff_max=float(backoff_max),
            heartbeat_interval=None if heartbeat_interval is None else float(heartbeat_interval),
            heartbeat_timeout=float(heartbeat_timeout),
            executor=executor,
            max_pending=max_pending,
            queue_warning=float(queue_warning),
        )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_seconds(name: str, value: object) -> None:
    if (
        not _is_number(value)
        or math.isnan(value)  # type: ignore[arg-type]
        or not 0 < value <= MAX_INTERVAL_SECONDS  # type: ignore[operator]
    ):
        raise ValueError(
            f"{name} must be a number of seconds above 0 and at most "
            f"{MAX_INTERVAL_SECONDS:.0f} (one day), not {value!r}"
        )
