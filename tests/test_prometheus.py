"""The Prometheus collector, scraped over HTTP as Prometheus would, from a real dispatcher."""

from __future__ import annotations

import dataclasses
import time
import urllib.request
import uuid
from collections.abc import Iterator

import psycopg2.extensions
import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from pgpubsub_dispatch import Dispatcher, DispatcherStats, Notification
from pgpubsub_dispatch.prometheus import LABEL, METRICS, PREFIX, DispatcherCollector

from .support.notifying import Collector, send
from .support.waiting import BOUND

Samples = dict[tuple[str, str], float]
"""Scraped values by (sample name, dispatcher label)."""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def scrape(registry: CollectorRegistry) -> Iterator[str]:
    """The URL of an HTTP server exporting ``registry``, on a free port of 127.0.0.1."""
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(BOUND)


def scraped(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=BOUND) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    return {
        (sample.name, sample.labels[LABEL]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if LABEL in sample.labels
    }


def wait_for_stats(bus: Dispatcher, done: str, expected: int) -> DispatcherStats:
    """Poll ``bus.stats()`` (public) until the field ``done`` reaches ``expected``; bounded."""
    deadline = time.monotonic() + BOUND
    while True:
        stats = bus.stats()
        if getattr(stats, done) >= expected or time.monotonic() > deadline:
            assert getattr(stats, done) == expected, stats
            return stats
        time.sleep(0.01)


def test_a_scrape_counts_what_the_dispatcher_received_dispatched_dropped_and_failed(
    dsn: str,
    sender: psycopg2.extensions.connection,
    collector: Collector,
    registry: CollectorRegistry,
    scrape: str,
) -> None:
    handled, unhandled = unique("metrics"), unique("metrics-unhandled")
    sent, failing, dropped = 7, 2, 3

    def handler(notification: Notification) -> None:
        collector(notification)
        if notification.payload.startswith("fail"):
            raise ValueError("a handler that fails, on purpose")

    bus = Dispatcher(dsn)
    bus.subscribe(handled, handler)
    bus.listen(unhandled)  # listened to, without a handler: its notifications are dropped
    DispatcherCollector(bus, name="orders", registry=registry)
    with bus:
        for index in range(sent):
            send(sender, handled, f"fail {index}" if index < failing else f"ok {index}")
        for index in range(dropped):
            send(sender, unhandled, f"nobody {index}")
        collector.wait(sent)
        stats = wait_for_stats(bus, "dropped", dropped)
        wait_for_stats(bus, "handler_errors", failing)
        samples = scraped(scrape)

        assert samples[(f"{PREFIX}notifications_received_total", "orders")] == sent + dropped
        assert samples[(f"{PREFIX}notifications_dispatched_total", "orders")] == sent
        assert samples[(f"{PREFIX}notifications_dropped_total", "orders")] == dropped
        assert samples[(f"{PREFIX}handler_errors_total", "orders")] == failing
        assert samples[(f"{PREFIX}reconnects_total", "orders")] == 0
        assert samples[(f"{PREFIX}connected", "orders")] == 1
        assert samples[(f"{PREFIX}backend_pid", "orders")] == bus.backend_pid
        assert stats.received == sent + dropped
    after = scraped(scrape)
    assert after[(f"{PREFIX}connected", "orders")] == 0
    assert (f"{PREFIX}backend_pid", "orders") not in after  # None: no sample
    assert after[(f"{PREFIX}notifications_received_total", "orders")] == sent + dropped


def test_every_numeric_stats_field_is_exported_with_its_documented_name(
    dsn: str, registry: CollectorRegistry
) -> None:
    bus = Dispatcher(dsn, heartbeat_interval=0.05)
    DispatcherCollector(bus, name="all", registry=registry)
    with bus:
        stats = wait_for_queue_usage(bus)
        text = generate_latest(registry).decode("utf-8")
    names = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    for field in dataclasses.fields(DispatcherStats):
        value = getattr(stats, field.name)
        if isinstance(value, (bool, int, float)):
            spec = METRICS.get(field.name)
            expected = spec.name if spec else f"{PREFIX}{field.name}"
            if spec and spec.counter:
                expected += "_total"
            assert expected in names, f"{field.name} is not exported as {expected}"
    assert f"{PREFIX}server_queue_usage_ratio" in names
    assert not [n for n in names if not n.startswith(PREFIX)]
    assert "# HELP pgpubsub_dispatch_notifications_received_total notifications read" in text


def wait_for_queue_usage(bus: Dispatcher) -> DispatcherStats:
    """The first stats with ``queue_usage`` known (after a heartbeat); bounded."""
    deadline = time.monotonic() + BOUND
    while (stats := bus.stats()).queue_usage is None:
        assert time.monotonic() < deadline, "no heartbeat reported the queue usage"
        time.sleep(0.01)
    return stats


def test_one_collector_exports_several_dispatchers_by_name(
    dsn: str, sender: psycopg2.extensions.connection, registry: CollectorRegistry, scrape: str
) -> None:
    channel = unique("metrics-two")
    first, second = Dispatcher(dsn), Dispatcher(dsn)
    got_first, got_second = Collector(), Collector()
    first.subscribe(channel, got_first)
    second.subscribe(channel, got_second)
    metrics = DispatcherCollector(first, name="first", registry=registry)
    metrics.add(second, name="second")
    with first, second:
        send(sender, channel, "to both")
        got_first.wait(1)
        got_second.wait(1)
        second.notify(channel, "and again")
        got_first.wait(2)
        samples = scraped(scrape)
        metrics.remove("second")
        without = scraped(scrape)
    received = f"{PREFIX}notifications_received_total"
    assert samples[(received, "first")] == 2
    assert samples[(received, "second")] == 2
    assert samples[(f"{PREFIX}backend_pid", "first")] != samples[(f"{PREFIX}backend_pid", "second")]
    assert (received, "second") not in without
    assert (received, "first") in without


def test_bad_names_and_a_second_collector_on_one_registry_are_refused(
    dsn: str, registry: CollectorRegistry
) -> None:
    bus = Dispatcher(dsn)
    metrics = DispatcherCollector(bus, name="main", registry=registry)
    with pytest.raises(ValueError, match="already exported"):
        metrics.add(Dispatcher(dsn), name="main")
    with pytest.raises(ValueError, match="non-empty"):
        metrics.add(Dispatcher(dsn), name="")
    with pytest.raises(ValueError, match="control characters"):
        metrics.add(Dispatcher(dsn), name="a\nb")
    with pytest.raises(TypeError, match="expected a Dispatcher"):
        metrics.add(object(), name="other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="required"):
        DispatcherCollector(bus, registry=None)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        DispatcherCollector(Dispatcher(dsn), name="other", registry=registry)
    with pytest.raises(KeyError):
        metrics.remove("nobody")
    names = {s.labels[LABEL] for f in registry.collect() for s in f.samples}
    assert names == {"main"}
