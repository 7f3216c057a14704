"""A WSGI app with one :class:`Dispatcher` for the process, for real gunicorn workers.

Not a pytest plugin: gunicorn imports it (``tests.support.forking_app:app``), in its master
with ``--preload``, else in each worker. Configured by the environment:

- ``PGPUBSUB_DSN``: the server; ``FORKING_APP_NAME``: the sessions' ``application_name``;
- ``FORKING_APP_CHANNEL``: the channel its handler listens to;
- ``FORKING_APP_OUT``: a folder: each process appends every payload its handler receives to
  ``<pid>.txt`` there, one a line (``ready`` first, once ``post_fork`` has started it);
- ``FORKING_APP_START``: ``import`` (default) starts the dispatcher at import time, as an app
  that knows nothing of forking does; ``post_fork``: ``gunicorn_conf.py``'s hook starts it.

``GET /notify?payload=P`` sends P and answers JSON: the worker's ``pid``, its dispatcher's
``backend_pid`` and the payloads its handler has received (its own P among them: a dispatcher's
handlers have run when its ``notify`` returns). ``GET /wait?payload=P`` does the same, then
holds the worker until its handler receives ``release`` (at most 10 s).
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from pgpubsub_dispatch import Dispatcher, Notification

CHANNEL = os.environ["FORKING_APP_CHANNEL"]
OUT = os.environ["FORKING_APP_OUT"]

bus = Dispatcher(
    os.environ["PGPUBSUB_DSN"], application_name=os.environ.get("FORKING_APP_NAME", "forking-app")
)
received: list[str] = []
released = threading.Event()


def write(line: str) -> None:
    """Append ``line`` to this process's file."""
    with open(os.path.join(OUT, f"{os.getpid()}.txt"), "a", encoding="utf-8") as out:
        out.write(line + "\n")


@bus.on(CHANNEL)
def record(notification: Notification) -> None:
    received.append(notification.payload)
    write(notification.payload)
    if notification.payload == "release":
        released.set()


if os.environ.get("FORKING_APP_START", "import") == "import":
    bus.start(timeout=10)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI application."""
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    payload = query.get("payload", [""])[0]
    try:
        bus.notify(CHANNEL, payload, timeout=10)
        if environ.get("PATH_INFO") == "/wait":
            released.wait(10)
        status = "200 OK"
        body: dict[str, Any] = {"received": list(received)}
    except Exception as exc:  # the test shows it
        status = "500 Internal Server Error"
        body = {"error": f"{type(exc).__name__}: {exc}"}
    body.update(pid=os.getpid(), backend_pid=bus.backend_pid)
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json")])
    return [data]
