"""Passwords never leave the library: not in exceptions, log lines, nor ``stats().last_error``.

Against a private server that requires passwords (md5 and scram-sha-256, one role each), and
with DSNs libpq cannot parse (which libpq would quote back). The password is given every way
the library accepts: in a URI, in a key=value string, as the ``password`` keyword.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Iterator

import psycopg2
import pytest

from pgpubsub_dispatch import Dispatcher
from pgpubsub_dispatch._secrets import MASK, Secrets

from .support.servers import PrivateServer
from .support.waiting import BOUND

RIGHT = "Right-S3cret"
"""The roles' password on the private server."""

WRONG = "Wr0ng-S3cret"
"""A password the server refuses; it must appear nowhere."""

METHODS = ["md5", "scram-sha-256"]

HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all app_md5 127.0.0.1/32 md5
host all app_scram 127.0.0.1/32 scram-sha-256
"""


def role(method: str) -> str:
    return "app_md5" if method == "md5" else "app_scram"


@pytest.fixture(scope="module")
def password_server() -> Iterator[PrivateServer]:
    """A private server where ``app_md5`` and ``app_scram`` log in with :data:`RIGHT` only."""
    with PrivateServer() as server:
        (server.data_dir / "pg_hba.conf").write_text(HBA)
        conn = psycopg2.connect(server.unix_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            for method in METHODS:
                cur.execute(f"SET password_encryption = '{method}'")
                cur.execute(f"CREATE ROLE {role(method)} LOGIN PASSWORD %s", (RIGHT,))
            cur.execute("SELECT pg_reload_conf()")
        conn.close()
        yield server


def texts(exc: BaseException) -> Iterator[str]:
    """Every text of ``exc`` and its whole chain: str, repr, args, __cause__, __context__."""
    seen: set[int] = set()
    waiting = [exc]
    while waiting:
        current = waiting.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield from (repr(arg) for arg in current.args)
        yield from (str(arg) for arg in current.args)
        waiting.extend(link for link in (current.__cause__, current.__context__) if link)


def assert_nowhere(
    secret: str, exc: BaseException, bus: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    """``secret`` (and its percent-decoded form) is in no exception, log record or stats."""
    forms = {secret, urllib.parse.unquote(secret)}
    for text in texts(exc):
        assert not any(form in text for form in forms), f"in the exception: {text!r}"
    for record in caplog.records:
        line = record.getMessage()
        assert not any(form in line for form in forms), f"in a log line: {line!r}"
    last_error = bus.stats().last_error or ""
    assert not any(form in last_error for form in forms), last_error


def start_fails(bus: Dispatcher, kind: type[BaseException]) -> BaseException:
    with pytest.raises(kind) as raised:
        bus.start(timeout=BOUND)
    assert not bus.running
    return raised.value


@pytest.fixture(autouse=True)
def debug_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pgpubsub_dispatch")


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:S3cret%zz@127.0.0.1:1/db",  # libpq quotes the bad token
        "postgresql://app:S3cret@[::1/db",  # libpq quotes the whole URI
        "postgresql://127.0.0.1:1/db?password=S3cret%zz",
        "postgresql://app:S3cret@127.0.0.1:1/d%zzb",
        "host=127.0.0.1 password='S3cret port",  # unterminated quote
    ],
    ids=["percent", "uri", "query", "dbname", "quote"],
)
def test_start_with_a_malformed_dsn_never_shows_the_password(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = Dispatcher(dsn)

    exc = start_fails(bus, psycopg2.Error)

    assert "invalid" in str(exc) or "unterminated" in str(exc), exc  # libpq's reason is kept
    assert_nowhere("S3cret", exc, bus, caplog)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:S3cret@Tail99@127.0.0.1:1/db",  # libpq quotes "Tail99@127.0.0.1"
        "postgresql://app:S3:cret/Tail99@127.0.0.1:1/db",  # libpq quotes "S3:cret" as a port
        "postgresql://app:S3cret@Tail99:x@127.0.0.1:1/db",
    ],
    ids=["at", "colon-slash", "at-colon"],
)
def test_an_unescaped_delimiter_in_a_uri_password_never_shows_any_piece(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a new user's trial: libpq splits such a URI at its delimiters and quotes a
    piece of the password back (as a host name, or a port)."""
    bus = Dispatcher(dsn, connect_timeout=2)

    exc = start_fails(bus, psycopg2.Error)

    for piece in ("S3cret", "Tail99", "S3:cret", "cret/Tail99"):
        if piece in dsn:
            assert_nowhere(piece, exc, bus, caplog)


def test_the_redacted_error_keeps_its_type_and_what_is_not_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = Dispatcher("postgresql://app:S3cret%zz@127.0.0.1:1/db")

    exc = start_fails(bus, psycopg2.ProgrammingError)

    assert type(exc) is psycopg2.ProgrammingError
    assert exc.__cause__ is None and exc.__context__ is None and exc.__suppress_context__
    assert str(exc).strip() == f'invalid dsn: invalid percent-encoded token: "{MASK}"'


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("form", ["uri", "keywords", "kwarg"])
def test_a_wrong_password_never_shows(
    password_server: PrivateServer, method: str, form: str, caplog: pytest.LogCaptureFixture
) -> None:
    port, user = password_server.port, role(method)
    bus = {
        "uri": lambda: Dispatcher(f"postgresql://{user}:{WRONG}@127.0.0.1:{port}/postgres"),
        "keywords": lambda: Dispatcher(
            f"host=127.0.0.1 port={port} dbname=postgres user={user} password='{WRONG}'"
        ),
        "kwarg": lambda: Dispatcher(
            host="127.0.0.1", port=port, dbname="postgres", user=user, password=WRONG
        ),
    }[form]()

    exc = start_fails(bus, psycopg2.OperationalError)

    assert "password authentication failed" in str(exc)
    assert_nowhere(WRONG, exc, bus, caplog)


@pytest.mark.parametrize("method", METHODS)
def test_the_right_password_connects_and_is_not_logged(
    password_server: PrivateServer, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = f"postgresql://{role(method)}:{RIGHT}@127.0.0.1:{password_server.port}/postgres"
    with Dispatcher(dsn) as bus:
        bus.listen("secrets")
        assert bus.stats().backend_pid is not None
    assert caplog.records, "nothing logged at DEBUG: the check below would prove nothing"
    for record in caplog.records:
        assert RIGHT not in record.getMessage()


def test_secrets_finds_every_form_of_a_password() -> None:
    cases = [
        ("postgresql://u:p%41ss%zz@h/d", 'bad token "p%41ss%zz"', 'bad token "***"'),
        ("postgresql://u:p%41ss@h/d", "x pAss y", "x *** y"),  # decoded form too
        ("host=h password='a b'", "it's 'a b' or a b", "it's *** or ***"),
        ("host=h password='it\\'s'", "it's", "***"),  # backslash-escaped quote
        ("postgresql://h/d?password=p%zz&x=1", '"p%zz"', '"***"'),
        ("postgresql://u:p@ss@h/d", "p@ss and ss@h", "*** and ss@h"),
        ("host=h port", "nothing secret", "nothing secret"),  # malformed, no password
    ]
    for dsn, text, masked in cases:
        assert Secrets(dsn).redact(text) == masked, dsn
    assert Secrets(None, {"password": "kw pw"}).redact("'kw pw' kw%20pw") == "'***' ***"
    assert not Secrets("host=h", {"user": "u"})


def test_a_redacted_exception_leaks_nothing_through_its_chain() -> None:
    secrets = Secrets("postgresql://u:S3cret@h/d")
    try:
        try:
            raise ValueError("context S3cret")
        except ValueError:
            raise RuntimeError("outer S3cret", 42) from OSError("cause S3cret")
    except RuntimeError as exc:
        original = exc
    assert original.__context__ is not None  # the original leaks through its context

    redacted = secrets.redacted(original)

    assert type(redacted) is RuntimeError and redacted.args == ("outer ***", 42)
    assert isinstance(redacted.__cause__, OSError) and str(redacted.__cause__) == "cause ***"
    assert redacted.__context__ is None and redacted.__suppress_context__
    assert not any("S3cret" in text for text in texts(redacted))
    harmless = RuntimeError("nothing to hide")
    assert secrets.redacted(harmless) is harmless
