"""The commands of gap-free channels, run by the dispatcher thread like every other command.

Sending (built in the caller's thread, by ``Dispatcher.notify`` and ``notify_many``):
:class:`GaplessNotify` and :class:`GaplessNotifyBatch` call ``pgpubsub_notify()`` in one
transaction of the dispatcher's session. They are never merged with plain notifies (the loop
gathers only plain :class:`~pgpubsub_dispatch._commands.Notify` commands), so plain channels
run exactly the statements they always did. Like a plain notify they need no LISTEN
(``any_session``), so under backpressure, and always for a handler running on the executor,
they go to the side session (``_side``), each in a transaction of its own.

Receiving (built on the dispatcher thread by :class:`~._sequencer.Sequencer`): :class:`CatchUp`
reads a channel's rows after the last position delivered; :class:`Report` records the reader's
positions for pruning. Both are the dispatcher's own: nobody waits on their futures, they need
no session to be settled (a lost session makes them obsolete: the sequencer starts afresh on
the next one), and a server error is handed to the sequencer instead of a caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._commands import Command, Notify, Served, Statement
from .._names import check_channel
from .._routing import Routes
from ._config import check_gapless_payload
from ._sql import notify_batch_statement, notify_statement

if TYPE_CHECKING:
    from ._sequencer import Sequencer

__all__ = ["CatchUp", "GaplessNotify", "GaplessNotifyBatch", "Report", "batched"]

_BATCH_ITEMS = 1000
"""Most gap-free notifications ``notify_many`` sends in one statement."""

_BATCH_BYTES = 8 * 1024 * 1024
"""Payload bytes after which ``notify_many`` starts another statement."""


class GaplessNotify(Command):
    """``SELECT schema.pgpubsub_notify(channel, payload)``; its result is the position."""

    __slots__ = ("channel", "payload", "schema")

    needs_session = True
    any_session = True  # it LISTENs to nothing: the side session may send it (see _detour)

    def __init__(self, channel: str, payload: str, schema: str) -> None:
        super().__init__()
        self.channel = check_channel(channel)
        self.payload = check_gapless_payload(payload)
        self.schema = schema

    @property
    def name(self) -> str:
        return "notify"

    def statement(self, routes: Routes) -> Statement | None:
        return notify_statement(self.schema), (self.channel, self.payload)

    def apply(self, served: Served) -> Any:
        row = served.fetch_row()
        return None if row is None else int(row[0])

    def interrupted(self, reason: BaseException, routes: Routes) -> None:
        self.future.set_exception(reason)  # it may or may not have committed


class GaplessNotifyBatch(Command):
    """Several gap-free notifications of one ``notify_many`` call, in one transaction."""

    __slots__ = ("channels", "payloads", "schema")

    needs_session = True
    any_session = True

    def __init__(self, channels: list[str], payloads: list[str], schema: str) -> None:
        super().__init__()
        self.channels = channels
        self.payloads = payloads
        self.schema = schema

    @property
    def name(self) -> str:
        return "notify"

    def statement(self, routes: Routes) -> Statement | None:
        return notify_batch_statement(self.schema), (self.channels, self.payloads)

    def interrupted(self, reason: BaseException, routes: Routes) -> None:
        self.future.set_exception(reason)


def batched(commands: Sequence[Command]) -> list[Command]:
    """Merge runs of :class:`GaplessNotify` into :class:`GaplessNotifyBatch` commands, in order.

    Plain notifies are left as they are (the loop batches them itself).
    """
    merged: list[Command] = []
    run: list[GaplessNotify] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if len(run) == 1:
            merged.append(run[0])
        elif run:
            merged.append(
                GaplessNotifyBatch(
                    [c.channel for c in run], [c.payload for c in run], run[0].schema
                )
            )
        run.clear()
        size = 0

    for command in commands:
        if not isinstance(command, GaplessNotify):
            flush()
            merged.append(command)
            continue
        if run and (
            len(run) >= _BATCH_ITEMS or size >= _BATCH_BYTES or command.schema != run[0].schema
        ):
            flush()
        run.append(command)
        size += len(command.payload)
    flush()
    return merged


class _Own(Command):
    """A command of the dispatcher's own: settled quietly whatever happens."""

    __slots__ = ()

    has_caller = False

    def record(self, routes: Routes) -> None:
        """No session: nothing to do (the sequencer starts afresh on the next session)."""


class CatchUp(_Own):
    """Read one channel's rows after its last delivered position (and register the reader)."""

    __slots__ = ("channel", "sequencer", "token")

    def __init__(self, sequencer: Sequencer, channel: str, token: int) -> None:
        super().__init__()
        self.sequencer = sequencer
        self.channel = channel
        self.token = token

    @property
    def name(self) -> str:
        return "gap-free catch-up read"

    def statement(self, routes: Routes) -> Statement | None:
        return self.sequencer.catch_up_statement(self)

    def apply(self, served: Served) -> Any:
        row = served.fetch_row() if self.sequencer.expects(self) else None
        self.sequencer.caught_up(self, row)

    def refused(self, error: BaseException, requeue: Callable[[list[Notify]], None]) -> None:
        self.sequencer.catch_up_failed(self, error)
        self.future.set_result(None)


class Report(_Own):
    """Record this reader's delivered positions in ``pgpubsub_readers`` (for pruning)."""

    __slots__ = ("positions", "sequencer")

    def __init__(self, sequencer: Sequencer, positions: dict[str, int]) -> None:
        super().__init__()
        self.sequencer = sequencer
        self.positions = positions

    @property
    def name(self) -> str:
        return "gap-free position report"

    def statement(self, routes: Routes) -> Statement | None:
        return self.sequencer.report_statement(self)

    def apply(self, served: Served) -> Any:
        self.sequencer.reported(self, None)

    def refused(self, error: BaseException, requeue: Callable[[list[Notify]], None]) -> None:
        self.sequencer.reported(self, error)
        self.future.set_result(None)
