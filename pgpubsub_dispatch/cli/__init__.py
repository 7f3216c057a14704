r"""The ``pgpubsub-dispatch`` command line: print notifications, or send them.

Also runnable as ``python -m pgpubsub_dispatch``::

    pgpubsub-dispatch [--dsn DSN] [-v] listen CHANNEL... [--count N] [--timeout S] [--json|--pretty]
    pgpubsub-dispatch [--dsn DSN] [-v] notify CHANNEL [PAYLOAD | -]
    pgpubsub-dispatch [--dsn DSN] [-v] install [--schema NAME]

The global options ``--dsn`` and ``-v``/``-vv`` go before the command or after it.

``listen`` writes one line per notification to standard output, flushed at once, in one of two
forms. When standard output is a terminal it writes a line for people (``--pretty`` forces it)::

    12:00:01 orders [pid 4242] {"id": 1}

the local time of receipt, the channel, the sender's pid and the payload. A payload that parses
as JSON is shown re-encoded on one line; any other payload is shown as it is, unless it is
empty, has surrounding blanks or holds control characters (a newline, an escape sequence), in
which case it is shown as a quoted JSON string with those characters escaped. Channel names
with blanks or control characters are quoted likewise. Nothing in a notification can move the
cursor or recolour the terminal.

Otherwise (piped, or with ``--json``) it writes one JSON object per line (UTF-8, non-ASCII
characters written as they are, so every channel name round-trips exactly)::

    {"channel": "orders", "payload": "{\"id\": 1}", "json": {"id": 1}, "pid": 4242,
     "received_at": "2024-05-01T12:00:00.000001+00:00"}

(shown on two lines here; always one line in the output). ``payload`` is always the raw text
(a ``str``). ``json`` is present only when that text is valid JSON (RFC 8259: no ``NaN`` or
``Infinity``), and holds the parsed value, which may be any JSON type, ``null`` included: test
for the key, not for its value. ``pid`` is the sending backend's process id; ``received_at`` is
the ISO 8601 UTC time at which the notification reached this process.

Once every channel is LISTENed, ``listen`` writes the line ``listening on "orders", "My Chan"``
(each name as a JSON string) to standard error: a notification committed after that line
appears is printed.

``notify CHANNEL PAYLOAD`` sends one notification; ``PAYLOAD`` defaults to ``""``.
``notify CHANNEL -`` sends one notification per line of standard input (UTF-8), the line without
its ``\n`` or ``\r\n``: an empty line is an empty payload, and empty input sends nothing.
Lines are sent as they are read (so ``tail -f log | pgpubsub-dispatch notify logs -`` works),
each batch read at once in as few transactions as the server allows, and identical lines are
all delivered. A line that is not valid UTF-8, holds NUL or is 8000 bytes or more stops the
command with exit 2 and its line number; the lines before it have been sent, none after it. To
send a literal ``-``, pipe it in.

``install [--schema NAME]`` creates (or updates) the log of gap-free channels
(:func:`pgpubsub_dispatch.gapless.install`) in schema ``NAME`` (default ``pgpubsub``), and says
so on standard error.

Channel names are exact and case-sensitive (they are always quoted), at most 63 bytes in UTF-8.
A name starting with ``-`` goes after ``--``: ``pgpubsub-dispatch listen -- -odd``.

The DSN (a libpq connection string or URI) is ``--dsn``, else the ``DATABASE_URL`` environment
variable, else ``""``: libpq's own environment (``PGHOST``, ``PGPORT``, ``PGUSER``,
``PGDATABASE``, ``PGPASSWORD``, ``~/.pgpass``, ...). No password is ever printed: error messages
are scrubbed of the DSN's password.

Exit codes:

- 0 (:data:`EXIT_OK`): ``notify`` sent its notifications; ``listen`` received ``--count``
  notifications, or ran for ``--timeout`` seconds without ``--count``, or was stopped by SIGINT
  or SIGTERM, or its standard output was closed by the reader (a broken pipe).
- 1 (:data:`EXIT_INCOMPLETE`): ``listen --count N --timeout S`` received fewer than ``N``
  notifications in ``S`` seconds.
- 2 (:data:`EXIT_ERROR`): bad usage or input (an invalid channel name or payload, an invalid
  DSN, unreadable standard input), a connection failure, an error reported by the server, or a
  connection lost while listening: one line ``pgpubsub-dispatch: error: ...`` on standard error
  (argparse's usage errors add a usage line before it). Never a traceback.
- 130 (SIGINT) or 143 (SIGTERM), 128 + the signal number: ``notify`` interrupted before it
  could confirm that every notification was sent.

The package's modules, each run on the main thread unless it says otherwise: ``_main``
(argparse, exit codes), ``_listen``, ``_notify`` and ``_install`` (the commands), ``_running``
(starting and stopping a command's dispatcher, signals), ``_dsn`` (which DSN, its password masked),
``_output`` (JSON and readable lines, terminal escaping), ``_common`` (messages, errors).
"""

from __future__ import annotations

from ._common import EXIT_ERROR, EXIT_INCOMPLETE, EXIT_OK, PROG, CommandError
from ._dsn import DSN_ENVIRON, redact, resolve_dsn
from ._main import build_parser, main
from ._output import json_line, pretty_line

__all__ = [
    "DSN_ENVIRON",
    "EXIT_ERROR",
    "EXIT_INCOMPLETE",
    "EXIT_OK",
    "PROG",
    "CommandError",
    "build_parser",
    "json_line",
    "main",
    "pretty_line",
    "redact",
    "resolve_dsn",
]
