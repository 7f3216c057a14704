"""Prometheus metrics for dispatchers: a collector that reads :meth:`Dispatcher.stats` on scrape.

Needs the ``prometheus`` extra (``pip install 'pgpubsub-dispatch[prometheus]'``, which installs
``prometheus_client``). Nothing is counted twice and nothing runs between scrapes: every scrape
takes one :class:`~pgpubsub_dispatch.DispatcherStats` snapshot per dispatcher and turns each of
its numeric fields into a metric family, labelled ``dispatcher="<name>"``:

=============================  ===================================================  =======
``DispatcherStats`` field      metric                                               type
=============================  ===================================================  =======
``received``                   ``pgpubsub_dispatch_notifications_received_total``   counter
``dispatched``                 ``pgpubsub_dispatch_notifications_dispatched_total`` counter
``dropped``                    ``pgpubsub_dispatch_notifications_dropped_total``    counter
``handler_errors``             ``pgpubsub_dispatch_handler_errors_total``           counter
``reconnects``                 ``pgpubsub_dispatch_reconnects_total``               counter
``connected``                  ``pgpubsub_dispatch_connected`` (1 or 0)             gauge
``queue_usage``                ``pgpubsub_dispatch_server_queue_usage_ratio``       gauge
``backend_pid``                ``pgpubsub_dispatch_backend_pid``                    gauge
any other ``int``/``float``    ``pgpubsub_dispatch_<field>`` (a ``bool``: 1 or 0)   gauge
=============================  ===================================================  =======

A field whose value is ``None`` (``queue_usage`` before the first heartbeat, ``backend_pid``
while disconnected) has no sample in that scrape; text fields (``last_error``) are not
exported. So a numeric field added to ``DispatcherStats`` later is exported without a change
here, as a gauge (give it a row in :data:`METRICS` to make it a counter). Each metric's help
text is the field's description in ``DispatcherStats``'s docstring.

:meth:`DispatcherCollector.collect` runs on the thread of whoever scrapes (the HTTP server's);
:meth:`~Dispatcher.stats` is safe from any thread.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import typing
from collections.abc import Iterator
from typing import NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from .dispatcher import Dispatcher, DispatcherStats

__all__ = ["LABEL", "METRICS", "PREFIX", "DispatcherCollector", "MetricSpec"]

PREFIX = "pgpubsub_dispatch_"
"""The prefix of every metric's name."""

LABEL = "dispatcher"
"""The name of the label holding each dispatcher's name."""


class MetricSpec(NamedTuple):
    """How one ``DispatcherStats`` field is exported.

    Attributes:
        name: the metric family's name (``str``), without a counter's ``_total`` suffix.
        counter: ``True`` for a counter (exposed with ``_total``), ``False`` for a gauge.
    """

    name: str
    counter: bool


METRICS: dict[str, MetricSpec] = {
    "received": MetricSpec(f"{PREFIX}notifications_received", counter=True),
    "dispatched": MetricSpec(f"{PREFIX}notifications_dispatched", counter=True),
    "dropped": MetricSpec(f"{PREFIX}notifications_dropped", counter=True),
    "handler_errors": MetricSpec(f"{PREFIX}handler_errors", counter=True),
    "reconnects": MetricSpec(f"{PREFIX}reconnects", counter=True),
    "connected": MetricSpec(f"{PREFIX}connected", counter=False),
    "queue_usage": MetricSpec(f"{PREFIX}server_queue_usage_ratio", counter=False),
    "backend_pid": MetricSpec(f"{PREFIX}backend_pid", counter=False),
}
"""The fields with a name or type of their own; any other numeric field is a gauge named
``pgpubsub_dispatch_<field>``."""

_NAME = re.compile(r"[^\x00-\x1f\x7f]+")


def _spec(field: str) -> MetricSpec:
    return METRICS.get(field, MetricSpec(f"{PREFIX}{field}", counter=False))


def _field_help() -> dict[str, str]:
    """Each field's description, from the ``Attributes:`` section of ``DispatcherStats``."""
    doc = DispatcherStats.__doc__ or ""
    section = doc.partition("Attributes:")[2]
    found = {}
    for match in re.finditer(r"^ +(\w+): (.+?)(?=^ +\w+: |\Z)", section, re.M | re.S):
        found[match[1]] = " ".join(match[2].split())
    return found


class DispatcherCollector(Collector):
    """A Prometheus collector exporting the :meth:`~Dispatcher.stats` of named dispatchers.

    ``DispatcherCollector(bus, name="orders")`` registers itself on ``prometheus_client``'s
    default registry, so that ``prometheus_client.start_http_server(port)`` (or any exporter
    of that registry) serves the metrics listed in the module's docstring. One collector
    serves any number of dispatchers (:meth:`add`), told apart by the ``dispatcher`` label:
    register one collector per registry, since two would export the same names.

    :param dispatcher: the dispatcher to export, or ``None`` to :meth:`add` them later. It
        may be started and stopped at will: the counters cover its whole life.
    :param name: the ``dispatcher`` label's value for it (``str``, not empty; required with
        ``dispatcher``).
    :param registry: the ``prometheus_client.CollectorRegistry`` to register on (default:
        ``prometheus_client.REGISTRY``), or ``None`` not to register.
    :raises TypeError: if ``dispatcher`` is not a :class:`Dispatcher`, or ``name`` not a
        ``str``.
    :raises ValueError: if ``name`` is empty or holds control characters, or is missing while
        ``dispatcher`` is given; also ``prometheus_client``'s ``ValueError`` if ``registry``
        already has these metrics (another ``DispatcherCollector``). Nothing is registered
        then.
    """

    def __init__(
        self,
        dispatcher: Dispatcher | None = None,
        *,
        name: str | None = None,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self._lock = threading.Lock()  # guards _dispatchers (add/remove vs. scrapes)
        self._dispatchers: dict[str, Dispatcher] = {}
        if dispatcher is not None:
            if name is None:
                raise ValueError("name= is required with a dispatcher: the label's value")
            self.add(dispatcher, name=name)
        elif name is not None:
            raise ValueError("name= was given without a dispatcher")
        if registry is not None:
            registry.register(self)

    def add(self, dispatcher: Dispatcher, *, name: str) -> None:
        """Export ``dispatcher`` too, labelled ``dispatcher="<name>"``.

        :param dispatcher: a :class:`Dispatcher`, running or not.
        :param name: the label's value (``str``): not empty, no control characters, not
            already used in this collector.
        :raises TypeError: if ``dispatcher`` is not a :class:`Dispatcher` or ``name`` not a
            ``str``.
        :raises ValueError: if ``name`` is empty, holds control characters, or is taken.
        """
        if not isinstance(dispatcher, Dispatcher):
            raise TypeError(f"expected a Dispatcher, got {type(dispatcher).__name__}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if not _NAME.fullmatch(name):
            raise ValueError(f"name must be non-empty, without control characters: {name!r}")
        with self._lock:
            if name in self._dispatchers:
                raise ValueError(f"a dispatcher named {name!r} is already exported")
            self._dispatchers[name] = dispatcher

    def remove(self, name: str) -> None:
        """Stop exporting the dispatcher labelled ``name``; its series end at the next scrape.

        :param name: the name given to :meth:`add` (``str``).
        :raises KeyError: if no dispatcher has that name here.
        """
        with self._lock:
            del self._dispatchers[name]

    def describe(self) -> Iterator[Metric]:
        """Yield the metric families without samples (used by registries to detect clashes).

        :returns: an iterator of ``prometheus_client`` metric families, one per exported field.
        """
        yield from self._families({})

    def collect(self) -> Iterator[Metric]:
        """Yield one metric family per exported field, with one sample per dispatcher.

        Called by ``prometheus_client`` on every scrape, on the scraping thread.

        :returns: an iterator of ``prometheus_client`` metric families.
        """
        with self._lock:
            dispatchers = dict(self._dispatchers)
        yield from self._families({name: bus.stats() for name, bus in dispatchers.items()})

    def _families(self, snapshots: dict[str, DispatcherStats]) -> Iterator[Metric]:
        helps = _field_help()
        for field in dataclasses.fields(DispatcherStats):
            if field.name not in METRICS and not _is_numeric_type(field.type):
                continue
            spec = _spec(field.name)
            documentation = helps.get(field.name, f"DispatcherStats.{field.name}")
            family: CounterMetricFamily | GaugeMetricFamily
            if spec.counter:
                family = CounterMetricFamily(spec.name, documentation, labels=[LABEL])
            else:
                family = GaugeMetricFamily(spec.name, documentation, labels=[LABEL])
            for name, stats in snapshots.items():
                value = getattr(stats, field.name)
                if isinstance(value, (bool, int, float)):
                    family.add_metric([name], float(value))
            yield family
        if "connected" not in {field.name for field in dataclasses.fields(DispatcherStats)}:
            # Derivable, so DispatcherStats may not carry it: connected means a backend pid.
            family = GaugeMetricFamily(
                METRICS["connected"].name, "whether a session is up right now.", labels=[LABEL]
            )
            for name, stats in snapshots.items():
                family.add_metric([name], float(stats.backend_pid is not None))
            yield family


def _is_numeric_type(annotation: object) -> bool:
    """Whether a ``DispatcherStats`` field's annotation is ``int``, ``float`` or ``bool``,
    optionally ``| None``: a string under postponed annotations, else the type itself."""
    if isinstance(annotation, str):
        names = {part.strip() for part in annotation.split("|")} - {"None"}
        return bool(names) and names <= {"int", "float", "bool"}
    kinds = set(typing.get_args(annotation) or (annotation,)) - {type(None)}
    return bool(kinds) and kinds <= {int, float, bool}
