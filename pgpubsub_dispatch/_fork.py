"""Fork safety: a child process never touches the connection its parent's dispatcher owns.

``os.register_at_fork`` runs :func:`_after_fork_in_child` in every child: the completions'
module lock is made anew (``_completion.after_fork_in_child``), and each dispatcher that was
:func:`track`-ed forgets its thread and connection (see ``Dispatcher._forget_after_fork``),
after :func:`neutralise` has made the inherited socket harmless.

:func:`_after_fork_in_child` runs in the child, on the thread that called ``fork()``, before
any other code of the child.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import psycopg2
import psycopg2.extensions

from . import _completion

__all__ = ["neutralise", "track"]

_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()
"""Every dispatcher of this process (anything with a ``_forget_after_fork()`` method)."""


def track(dispatcher: Any) -> None:
    """Have ``dispatcher._forget_after_fork()`` called in every child process."""
    _LIVE.add(dispatcher)


def neutralise(conn: psycopg2.extensions.connection) -> None:
    """Make a connection inherited through fork() harmless to the parent's session.

    Closing it in the child would send the server a Terminate message on the shared socket and
    end the parent's session. Pointing the child's descriptor at /dev/null first means that
    whatever libpq does with it later (at close or garbage collection) goes nowhere.
    """
    try:
        fd = conn.fileno()
    except psycopg2.Error:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _after_fork_in_child() -> None:
    _completion.after_fork_in_child()  # first: forgetting may touch completions
    for dispatcher in list(_LIVE):
        dispatcher._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
