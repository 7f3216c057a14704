"""Helpers for the test suite; no test module imports another test module, only these.

Modules that define fixtures are pytest plugins, loaded by ``tests/conftest.py``
(``pytest_plugins``); test modules ask for those fixtures by name and import only the plain
helpers (classes, functions, constants).

:mod:`~tests.support.waiting`
    ``BOUND`` (the longest any single wait may take) and :func:`wait_until`, the one bounded
    poll of public state.
:mod:`~tests.support.notifying`
    :func:`send` (NOTIFY from another session) and :class:`Collector` (a handler a test can
    wait on).
:mod:`~tests.support.dispatching`
    Watching a dispatcher from outside: its threads, its server sessions, a raw listener, its
    lifecycle signals; the ``bus`` fixture (a started dispatcher).
:mod:`~tests.support.programs`
    The examples run as subprocesses (:class:`Program`), their environment, the ``programs``
    fixture.
:mod:`~tests.support.servers`
    Private PostgreSQL servers to stop, restart and crash; the ``private_server`` fixture.
:mod:`~tests.support.proxy`
    A TCP proxy that breaks the network; the ``server_proxy`` fixture.
"""
