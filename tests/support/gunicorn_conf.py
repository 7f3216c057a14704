"""gunicorn settings for ``FORKING_APP_START=post_fork``: README.rst's recipe, as tested.

Each worker starts the app's dispatcher once it is forked, and stops it when it exits.
"""

from __future__ import annotations

from typing import Any


def post_fork(server: Any, worker: Any) -> None:
    """In each worker, once forked: start its dispatcher (a session of its own)."""
    from tests.support import forking_app

    forking_app.bus.start(timeout=10)
    forking_app.write("ready")


def worker_exit(server: Any, worker: Any) -> None:
    """In each worker, as it exits: UNLISTEN and close its session."""
    from tests.support import forking_app

    forking_app.bus.stop(timeout=10)
