"""``examples/flask_sse.py`` end to end: run as a user runs it, seen through headless Chromium.

The example runs as a subprocess on 127.0.0.1 (a free port) against the test server. Browsers
are Debian's ``chromium`` driven through ``chromium-driver`` by selenium; ``.ci/run`` installs
both packages. Without them these tests fail, loudly: they never skip. Every wait is bounded
(``WebDriverWait``, or a bounded read of the example's log); nothing sleeps.

Screenshots of the two tabs of the main test are saved in ``artifacts/`` (not versioned).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from .support.notifying import send
from .support.programs import STARTUP_BOUND, Program, example_env, unique
from .support.waiting import BOUND

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGUMENTS = [
    "--headless",
    "--no-sandbox",  # as root, and in containers
    "--disable-gpu",
    "--disable-background-networking",  # no network but the loopback: never call home
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=900,600",
]
KEEPALIVE = 0.5
"""The example's keepalive interval here: a gone client is noticed within two of them."""

Conn = psycopg2.extensions.connection


@dataclass
class App:
    """The example, running."""

    program: Program
    url: str  # http://127.0.0.1:PORT/

    def page(self, channel: str) -> str:
        return f"{self.url}?{urllib.parse.urlencode({'channel': channel})}"

    def connection(self) -> http.client.HTTPConnection:
        parsed = urllib.parse.urlsplit(self.url)
        assert parsed.hostname is not None and parsed.port is not None
        return http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=BOUND)


@contextlib.contextmanager
def serve(*dsn: str, env: dict[str, str], timeout: float = BOUND) -> Iterator[App]:
    """Run the example on a free port of 127.0.0.1 until it serves; kill it at the end."""
    program = Program(
        "flask_sse.py",
        *dsn,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--keepalive",
        str(KEEPALIVE),
        env=env,
    )
    try:
        pattern = r"INFO flask_sse: serving on (http://127\.0\.0\.1:\d+/) "
        yield App(program, program.wait_for(pattern, timeout)[1])
    finally:
        program.kill()


@pytest.fixture
def app(dsn: str) -> Iterator[App]:
    """The example, serving with the test server."""
    with serve(dsn, env=example_env(dsn)) as running:
        yield running


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Callable[[], WebDriver]]:
    """Start headless Chromium browsers, each with a profile of its own; quit at teardown."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run does); this test never skips"
        )
    started: list[WebDriver] = []

    def open_browser() -> WebDriver:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in CHROMIUM_ARGUMENTS:
            options.add_argument(argument)
        options.add_argument(f"--user-data-dir={tmp_path / f'profile-{len(started)}'}")
        # A driver path given: selenium-manager is not run, so nothing is downloaded.
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        started.append(driver)
        driver.set_page_load_timeout(BOUND)
        return driver

    yield open_browser
    for driver in started:
        driver.quit()


class Tab:
    """The example's page open on a channel, in a browser tab."""

    def __init__(self, driver: WebDriver, app: App, channel: str) -> None:
        self.driver = driver
        driver.get(app.page(channel))

    def wait(self, condition: Callable[[WebDriver], Any], message: str) -> Any:
        return WebDriverWait(self.driver, BOUND).until(condition, message)

    def wait_connected(self) -> None:
        """Wait until the page's EventSource is open: the server LISTENs for it."""
        self.wait(
            expected_conditions.text_to_be_present_in_element((By.ID, "status"), "connected"),
            f"the page never connected: {self.text('#status')!r}",
        )

    def post(self, message: str) -> None:
        """Type ``message`` and press Send, as a person would."""
        self.driver.find_element(By.ID, "message").send_keys(message)
        self.driver.find_element(By.ID, "submit").click()

    def texts(self, selector: str) -> list[str]:
        """The text of every element matching ``selector``, read in one go."""
        texts: list[str] = self.driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)",
            selector,
        )
        return texts

    def text(self, selector: str) -> str:
        return "".join(self.texts(selector))

    def wait_for_messages(self, expected: list[str]) -> None:
        """Wait until the list of received messages is exactly ``expected``."""
        self.wait(
            lambda driver: self.texts("#messages .payload") == expected,
            f"expected {expected}, the page shows {self.texts('#messages .payload')}",
        )


def read_event(response: http.client.HTTPResponse) -> tuple[list[str], dict[str, Any]]:
    """Read up to the next event: the comments before it, and its data (parsed)."""
    comments: list[str] = []
    data: list[str] = []
    while True:
        line = response.readline().decode("utf-8")
        assert line.endswith("\n"), f"the stream ended: {line!r}"
        line = line[:-1]
        if line.startswith(":"):
            comments.append(line)
        elif line.startswith("data: "):
            data.append(line[len("data: ") :])
        elif line == "" and data:
            decoded: dict[str, Any] = json.loads("\n".join(data))
            return comments, decoded


def skip_to_line(response: http.client.HTTPResponse, wanted: bytes) -> list[bytes]:
    """Read lines up to ``wanted``; return those before it. Bounded by the socket's timeout."""
    skipped = []
    while (line := response.readline()) != wanted:
        assert line, f"the stream ended before {wanted!r}"
        skipped.append(line)
    return skipped


# --------------------------------------------------------------------------------------------
# In a browser


def test_two_tabs_show_a_message_posted_in_one_and_a_notification_sent_from_sql(
    app: App, browser: Callable[[], WebDriver], sender: Conn
) -> None:
    channel = unique("Browser Chat é")  # a blank and an accent: exact names end to end
    tabs = [Tab(browser(), app, channel) for _ in range(2)]
    for tab in tabs:
        tab.wait_connected()
        assert tab.text("#channel") == channel

    tabs[0].post("hello from tab 1")
    for tab in tabs:
        tab.wait_for_messages(["hello from tab 1"])
    assert tabs[0].driver.find_element(By.ID, "message").get_attribute("value") == ""

    send(sender, channel, "hello from SQL")
    for tab in tabs:
        tab.wait_for_messages(["hello from tab 1", "hello from SQL"])
        sql_pid = tab.texts("#messages .pid")[1]
        assert sql_pid == f"from pid {sender.get_backend_pid()}"

    ARTIFACTS.mkdir(exist_ok=True)
    for number, tab in enumerate(tabs, start=1):
        screenshot = ARTIFACTS / f"flask_sse-tab{number}.png"
        assert tab.driver.save_screenshot(str(screenshot))
        image = screenshot.read_bytes()
        assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 5000, screenshot


def test_a_refused_message_is_explained_on_the_page(
    app: App, browser: Callable[[], WebDriver]
) -> None:
    tab = Tab(browser(), app, unique("browser"))
    tab.wait_connected()
    field = tab.driver.find_element(By.ID, "message")
    tab.driver.execute_script("arguments[0].value = 'é'.repeat(4000)", field)  # 8000 bytes

    tab.driver.find_element(By.ID, "submit").click()

    tab.wait(
        lambda driver: "8000 bytes" in tab.text("#error"),
        f"no error shown: {tab.text('#error')!r}",
    )
    assert tab.texts("#messages .payload") == []


def test_closing_a_tab_closes_its_stream_on_the_server(
    app: App, browser: Callable[[], WebDriver]
) -> None:
    channel = unique("browser")
    driver = browser()
    tab = Tab(driver, app, channel)
    tab.wait_connected()
    app.program.wait_for(rf"event stream opened on '{channel}' \(1 open\)")
    first_tab = driver.current_window_handle
    driver.switch_to.new_window("tab")  # so that closing the page leaves the browser running

    driver.switch_to.window(first_tab)
    driver.close()

    app.program.wait_for(
        rf"event stream closed on '{channel}' after 0 events, 0 dropped \(0 open\)"
    )


# --------------------------------------------------------------------------------------------
# Over plain HTTP


def test_events_are_server_sent_events_with_keepalive_comments(app: App, sender: Conn) -> None:
    channel = unique("sse")
    connection = app.connection()
    connection.request("GET", "/events?" + urllib.parse.urlencode({"channel": channel}))
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/event-stream")
    assert response.readline() == b"retry: 2000\n"  # sent once listening
    payload = 'two lines\nwith "quotes" and ünïcode 🎉'

    send(sender, channel, payload)

    _, event = read_event(response)
    assert event == {"channel": channel, "payload": payload, "pid": sender.get_backend_pid()}
    before = skip_to_line(response, b": keepalive\n")  # after KEEPALIVE seconds of silence
    assert set(before) <= {b"\n"}

    send(sender, channel, "after the keepalive")

    assert read_event(response)[1] == {**event, "payload": "after the keepalive"}
    response.close()  # the client goes away
    connection.close()
    app.program.wait_for(rf"event stream closed on '{channel}' after 2 events")


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"channel": "", "message": "x"}, 400, "empty"),
        ({"channel": "x" * 64, "message": "x"}, 400, "64 bytes"),
        ({"channel": "ok", "message": "x" * 8000}, 400, "8000 bytes"),
    ],
    ids=["empty-channel", "long-channel", "large-payload"],
)
def test_send_refuses_what_the_server_would_refuse(
    app: App, form: dict[str, str], status: int, error: str
) -> None:
    connection = app.connection()
    connection.request(
        "POST",
        "/send",
        body=urllib.parse.urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    response = connection.getresponse()
    assert response.status == status
    assert error in json.loads(response.read())["error"]
    connection.close()


def test_events_refuses_an_invalid_channel(app: App) -> None:
    connection = app.connection()
    connection.request("GET", "/events?channel=" + "x" * 64)
    response = connection.getresponse()
    assert response.status == 400
    assert "64 bytes" in json.loads(response.read())["error"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_open_streams_and_stops_cleanly(app: App, signum: signal.Signals) -> None:
    channel = unique("sse")
    connection = app.connection()
    connection.request("GET", "/events?" + urllib.parse.urlencode({"channel": channel}))
    response = connection.getresponse()
    assert response.readline() == b"retry: 2000\n"

    assert app.program.stop(signum) == 0, app.program.text

    assert response.read().replace(b": keepalive\n", b"").strip() == b""  # ended, no error
    response.close()
    connection.close()
    output = app.program.text
    assert re.search(
        rf"event stream closed on '{channel}' after 0 events, 0 dropped \(0 open\)", output
    )
    assert output.splitlines()[-1].endswith("INFO flask_sse: stopped"), output
    assert "Traceback" not in output


def test_a_signal_while_connecting_stops_at_once() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        silent.settimeout(BOUND)
        port = silent.getsockname()[1]
        program = Program(
            "flask_sse.py", f"host=127.0.0.1 port={port} sslmode=disable", env=example_env(None)
        )
        try:
            connection, _ = silent.accept()  # the example is inside bus.start()
            with connection:
                assert program.stop(signal.SIGTERM) == 0, program.text
        finally:
            program.kill()
    assert program.output[-1].endswith("INFO flask_sse: stopped before serving"), program.text
    assert "Traceback" not in program.text


def test_serves_with_a_throwaway_server_when_none_is_configured() -> None:
    with serve(env=example_env(None), timeout=STARTUP_BOUND) as app:
        connection = app.connection()
        connection.request("GET", "/events")  # the default channel
        response = connection.getresponse()
        assert response.readline() == b"retry: 2000\n"
        sender = app.connection()
        sender.request(
            "POST",
            "/send",
            body="message=zero+setup",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert sender.getresponse().status == 204
        sender.close()

        _, event = read_event(response)

        assert (event["channel"], event["payload"]) == ("chat", "zero setup")
        response.close()
        connection.close()
        assert app.program.stop(signal.SIGTERM) == 0, app.program.text
