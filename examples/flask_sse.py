"""A live web page: notifications of a channel streamed to browsers with Server-Sent Events.

A threaded Flask app with one :class:`~pgpubsub_dispatch.Dispatcher` for the whole process. The
page opens an ``EventSource`` on ``/events?channel=NAME``; the server gives each such request a
stream of its own (``bus.stream(channel)``) and forwards every notification of the channel as
an event, with a ``: keepalive`` comment whenever nothing was sent for ``--keepalive`` seconds:
once a tab is closed, writing fails, and its stream is closed (the log says so). The page's
form POSTs a message to ``/send``, which sends it with ``bus.notify``; every page open on the
channel shows it, like any notification of the channel sent from anywhere else. Run it as it
is, from the repository's root (it needs Flask: ``pip install -e '.[web]'``)::

    python examples/flask_sse.py                            # finds or starts a server
    python examples/flask_sse.py postgresql://me@localhost/mydb --port 8000
    DATABASE_URL=postgresql://me@localhost/mydb python examples/flask_sse.py

then open the address it logs (``serving on http://127.0.0.1:8000/``) in two browser tabs, and
add ``?channel=NAME`` for another channel than ``chat``. From elsewhere::

    psql -c "SELECT pg_notify('chat', 'hello from SQL')"
    pgpubsub-dispatch notify chat 'hello from the shell'

The DSN is the argument, else what :func:`pgpubsub_dispatch.devserver.server` finds, like every
example (``PGPUBSUB_DSN``, ``DATABASE_URL``, libpq's environment, or a throwaway server that only
this process's user can reach: then the page is the way in; see README.rst, "Servers for
examples and tests"). ``--port 0`` picks a free port. It stops cleanly on SIGTERM
or Ctrl-C: the open event streams end, the dispatcher stops, exit 0. Exit 2 if no server could
be had or reached, or the port is taken.

This is a demonstration: werkzeug's server is for development, and any visitor may listen and
send on any channel it names. A real application restricts channels to what the user may see,
runs ``create_app`` under a production WSGI server with threads (each open page holds one),
and creates the ``Dispatcher`` in each worker process, after any fork.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import queue
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

import psycopg2
from flask import Flask, Response, request
from werkzeug.serving import make_server

from pgpubsub_dispatch import (
    Dispatcher,
    DispatcherStopped,
    NoServerAvailable,
    Notification,
    NotificationStream,
    devserver,
)

log = logging.getLogger("flask_sse")

DEFAULT_CHANNEL = "chat"
KEEPALIVE_SECONDS = 15.0
"""Default seconds of silence after which an event stream writes a ``: keepalive`` comment."""
STREAM_MAXSIZE = 100
"""Notifications kept for a browser that reads slowly; beyond, the oldest are dropped."""
CALL_TIMEOUT = 10.0
"""Seconds a request waits for the dispatcher (to subscribe, or to send) before giving up."""
SHUTDOWN_SECONDS = 5.0
"""Seconds to let open event streams end at shutdown."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "dsn",
        nargs="?",
        help="libpq connection string or URI (default: $PGPUBSUB_DSN, $DATABASE_URL, libpq's "
        "PG* environment, else a throwaway server)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8000,
        help="port to serve on; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--channel",
        default=DEFAULT_CHANNEL,
        help="channel of a page opened without ?channel= (default: %(default)s)",
    )
    parser.add_argument(
        "--keepalive",
        type=float,
        default=KEEPALIVE_SECONDS,
        metavar="SECONDS",
        help="keepalive interval of the event streams (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    try:
        with devserver.server(args.dsn) as dsn:
            return serve(dsn, args.host, args.port, args.channel, args.keepalive)
    except NoServerAvailable as exc:
        log.error("%s", exc)
        return 2


def serve(dsn: str, host: str, port: int, default_channel: str, keepalive: float) -> int:
    """Serve the page until SIGTERM or SIGINT; return the exit code."""
    bus = Dispatcher(dsn, application_name="pgpubsub-flask-sse", connect_timeout=10)
    streams = OpenStreams()
    app = create_app(bus, default_channel=default_channel, keepalive=keepalive, streams=streams)
    # Until it serves, a signal interrupts whatever runs, such as a connection attempt.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        bus.start()
        httpd = make_server(host, port, app, threaded=True)
    except KeyboardInterrupt:
        bus.stop(timeout=10)
        log.info("stopped before serving")
        return 0
    except (psycopg2.OperationalError, TimeoutError) as exc:
        log.error("cannot connect: %s", " ".join(str(exc).split()))
        return 2
    except OSError as exc:  # from make_server()
        log.error("cannot serve on %s port %d: %s", host, port, exc)
        bus.stop(timeout=10)
        return 2
    except SystemExit:  # werkzeug's make_server() exits itself when the port is taken
        log.error("cannot serve on %s port %d (in use?)", host, port)
        bus.stop(timeout=10)
        return 2

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever(), which runs in this very (main) thread, where
        # Python runs signal handlers: ask from another thread.
        threading.Thread(target=httpd.shutdown, name="stop-request", daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    address = f"[{host}]" if ":" in host else host
    log.info(
        "serving on http://%s:%d/ (channel %r unless ?channel= says otherwise); "
        "stop with Ctrl-C or SIGTERM",
        address,
        httpd.server_port,
        default_channel,
    )
    try:
        httpd.serve_forever()
    finally:
        log.info("stopping: ending %d open event streams", len(streams))
        streams.close_all(timeout=SHUTDOWN_SECONDS)
        httpd.server_close()
        bus.stop(timeout=10)  # UNLISTEN, close the connection, end the thread
        log.info("stopped")
    return 0


def interrupt(signum: int, frame: FrameType | None) -> None:
    """A signal handler raising ``KeyboardInterrupt`` (SIGINT's usual effect) for any signal."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


class OpenStreams:
    """The streams of the event-stream responses in progress: counted, and closed at shutdown.

    Any thread may call every method.
    """

    def __init__(self) -> None:
        self._streams: set[NotificationStream] = set()
        self._changed = threading.Condition()
        self._closing = False

    def __len__(self) -> int:
        with self._changed:
            return len(self._streams)

    def __contains__(self, stream: object) -> bool:
        with self._changed:
            return stream in self._streams

    def add(self, stream: NotificationStream) -> int:
        """Count ``stream`` in (closing it at once during shutdown); return how many are open."""
        with self._changed:
            self._streams.add(stream)
            closing = self._closing
            count = len(self._streams)
        if closing:
            stream.close()
        return count

    def discard(self, stream: NotificationStream) -> int:
        """Count ``stream`` out; return how many are still open."""
        with self._changed:
            self._streams.discard(stream)
            self._changed.notify_all()
            return len(self._streams)

    def close_all(self, timeout: float) -> None:
        """Close every stream, which ends its response; wait up to ``timeout`` s for them."""
        with self._changed:
            self._closing = True
            streams = list(self._streams)
        for stream in streams:
            stream.close()
        with self._changed:
            self._changed.wait_for(lambda: not self._streams, timeout)


def create_app(
    bus: Dispatcher,
    *,
    default_channel: str = DEFAULT_CHANNEL,
    keepalive: float = KEEPALIVE_SECONDS,
    streams: OpenStreams | None = None,
) -> Flask:
    """The Flask app: the page at ``/``, its event stream at ``/events``, ``POST /send``.

    :param bus: a started dispatcher, shared by every request.
    :param default_channel: the channel of ``/`` and ``/events`` without ``?channel=``.
    :param keepalive: seconds of silence after which an event stream writes a comment.
    :param streams: where open event streams are counted (a new :class:`OpenStreams` if
        ``None``), for the caller to close them at shutdown.
    """
    app = Flask(__name__)
    open_streams = OpenStreams() if streams is None else streams

    @app.get("/")
    def page() -> Response:
        body = PAGE.replace("{default_channel}", html.escape(default_channel, quote=True))
        return Response(body, mimetype="text/html")

    @app.get("/events")
    def events() -> Response:
        channel = request.args.get("channel", default_channel)
        try:
            stream = bus.stream(channel, maxsize=STREAM_MAXSIZE)
        except ValueError as exc:  # InvalidChannelName
            return error(400, str(exc))
        try:
            stream.open(timeout=CALL_TIMEOUT)  # LISTENing when it returns
        except (DispatcherStopped, TimeoutError, psycopg2.Error) as exc:
            return error(503, f"cannot listen to {channel!r}: {exc}")
        body = EventStream(stream, channel, keepalive, open_streams)
        return Response(
            body,  # werkzeug calls body.close() when the response ends, however it ends
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.post("/send")
    def send() -> Response:
        channel = request.form.get("channel", default_channel)
        message = request.form.get("message", "")
        try:
            bus.notify(channel, message, timeout=CALL_TIMEOUT)  # committed when it returns
        except (ValueError, TypeError) as exc:  # InvalidChannelName, PayloadTooLarge, NUL
            return error(400, str(exc))
        except (DispatcherStopped, TimeoutError, psycopg2.Error) as exc:
            return error(503, f"not sent: {' '.join(str(exc).split())}")
        return Response(status=204)

    return app


class EventStream:
    """The body of one ``/events`` response: an event per notification, and keepalives.

    Iterating ends when the stream is closed (at shutdown). When the browser has gone, a write
    fails; either way werkzeug then calls :meth:`close`, which closes the stream.

    :param stream: an open stream, owned from now on.
    :param channel: its channel, for the log.
    :param keepalive: seconds of silence after which a ``: keepalive`` comment is written.
    :param open_streams: where the stream is counted while open.
    """

    def __init__(
        self, stream: NotificationStream, channel: str, keepalive: float, open_streams: OpenStreams
    ) -> None:
        self._stream = stream
        self._channel = channel
        self._keepalive = keepalive
        self._open_streams = open_streams
        self._sent = 0
        count = open_streams.add(stream)
        log.info("event stream opened on %r (%d open)", channel, count)

    def __iter__(self) -> Iterator[str]:
        # Written at once: the response's headers go with it, so the browser's EventSource
        # "open" event means "listening". ``retry``: milliseconds before a browser reconnects.
        yield "retry: 2000\n\n"
        while True:
            try:
                notification = self._stream.get(timeout=self._keepalive)
            except queue.Empty:
                if self._stream.closed:
                    return
                yield ": keepalive\n\n"  # raises here once the browser has gone
                continue
            yield sse_event(notification)
            self._sent += 1

    def close(self) -> None:
        """Close the stream (unsubscribing; UNLISTEN if no one else listens). Idempotent."""
        if self._stream.closed and self._stream not in self._open_streams:
            return
        self._stream.close()
        left = self._open_streams.discard(self._stream)
        log.info(
            "event stream closed on %r after %d events, %d dropped (%d open)",
            self._channel,
            self._sent,
            self._stream.dropped,
            left,
        )


def sse_event(notification: Notification) -> str:
    """A notification as one Server-Sent Event: its ``data`` is one line of JSON."""
    data = {
        "channel": notification.channel,
        "payload": notification.payload,
        "pid": notification.pid,
    }
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status=status, mimetype="application/json")


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pgpubsub-dispatch</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 40em; padding: 0 1em; }
  h1 { font-size: 1.4em; }
  code { background: #eef; padding: 0 .3em; }
  #status { font-weight: bold; }
  #status.ok { color: #080; }
  #status.bad { color: #b00; }
  #error { color: #b00; min-height: 1.4em; }
  form { display: flex; gap: .5em; }
  #message { flex: 1; font: inherit; padding: .3em; }
  #messages { list-style: none; padding: 0; }
  #messages li { border-bottom: 1px solid #ddd; padding: .3em 0; }
  #messages time, #messages .pid { color: #777; font-size: .85em; }
</style>
</head>
<body data-default-channel="{default_channel}">
<h1>Channel <code id="channel"></code></h1>
<p>Status: <span id="status">connecting…</span></p>
<form id="send" method="post" action="send">
  <input type="hidden" name="channel">
  <input id="message" name="message" autocomplete="off" placeholder="a message" required>
  <button id="submit" type="submit">Send</button>
</form>
<p id="error" role="alert"></p>
<ul id="messages"></ul>
<script>
"use strict";
const channel = new URLSearchParams(location.search).get("channel")
  || document.body.dataset.defaultChannel;
const form = document.getElementById("send");
const status = document.getElementById("status");
const errors = document.getElementById("error");
const messages = document.getElementById("messages");
document.getElementById("channel").textContent = channel;
document.title = channel + " - pgpubsub-dispatch";
form.elements.channel.value = channel;

function setStatus(text, className) {
  status.textContent = text;
  status.className = className;
}

function span(className, text) {
  const element = document.createElement("span");
  element.className = className;
  element.textContent = text;  // text, never HTML: payloads come from anyone
  return element;
}

const events = new EventSource("events?channel=" + encodeURIComponent(channel));
events.onopen = () => setStatus("connected", "ok");
events.onerror = () => setStatus(
  events.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…", "bad");
events.onmessage = (event) => {
  const notification = JSON.parse(event.data);
  const item = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  item.append(time, " ", span("payload", notification.payload), " ",
              span("pid", "from pid " + notification.pid));
  messages.append(item);
};

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errors.textContent = "";
  try {
    const response = await fetch("send", {method: "POST", body: new FormData(form)});
    if (response.ok) {
      form.elements.message.value = "";
    } else {
      errors.textContent = (await response.json()).error;
    }
  } catch (error) {
    errors.textContent = "not sent: " + error;
  }
  form.elements.message.focus();
});
</script>
</body>
</html>
"""


if __name__ == "__main__":
    sys.exit(main())
