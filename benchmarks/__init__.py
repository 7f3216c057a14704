"""Benchmarks of ``pgpubsub_dispatch`` against the bare psycopg2 loop and its peers.

Run everything, in one process tree and one run, with::

    python -m benchmarks            # full mode: 5 runs, medians (several minutes)
    python -m benchmarks --quick    # smoke mode: 1 short run, under a minute

See ``python -m benchmarks --help`` and ``benchmarks/README.md`` for the workloads, the
receivers compared and the fairness rules (one receiver at a time, a fresh connection and a
fresh channel for each, senders in other processes).

Modules: :mod:`.config` (sizes per mode), :mod:`.sinks` (the handlers every receiver calls),
:mod:`.receivers` (the receivers compared), :mod:`.senders` (sender processes),
:mod:`.workloads` (receive workloads), :mod:`.notify` (``notify()`` throughput),
:mod:`.resources` (memory and idle CPU, in child processes), :mod:`.report` (machine facts,
table, JSON) and :mod:`.runner` (the whole run).
"""
