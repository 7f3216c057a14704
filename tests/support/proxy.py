"""A TCP proxy that breaks the network under a test, for real.

:class:`TcpProxy`
    A selector-based TCP proxy on ``127.0.0.1`` that can turn its existing connections into
    half-open ones (:meth:`TcpProxy.blackhole`), reset them (:meth:`TcpProxy.reset_all`) and
    hold or refuse new ones (:meth:`TcpProxy.pause_new`).

Fixture (this module is a pytest plugin, loaded by ``tests/conftest.py``): ``server_proxy``, a
:class:`TcpProxy` in front of the ``private_server`` fixture's server
(:mod:`tests.support.servers`).

A note on what the proxy's "blackhole" is and is not: the proxy's own kernel keeps ACKing the
client's segments and TCP keepalive probes, so only an application-level timeout (a query that
never gets its reply) can notice it, never ``keepalives_*`` nor ``tcp_user_timeout``.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from .servers import PrivateServer

__all__ = ["TcpProxy", "server_proxy_fixture"]


_LINGER_ZERO = struct.pack("ii", 1, 0)
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_CLIENT = "client"
_UPSTREAM = "upstream"


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` abruptly: the peer gets a RST, not a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    sock.close()


class _Conn:
    """One proxied connection: the accepted client socket and the socket to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.connecting = True
        self.blackholed = False
        self.closed = False
        self.buffers: dict[str, bytearray] = {_CLIENT: bytearray(), _UPSTREAM: bytearray()}
        """Bytes waiting to be written to each side."""
        self.eof: dict[str, bool] = {_CLIENT: False, _UPSTREAM: False}
        """Whether each side has sent its FIN (or is gone)."""
        self.shut: dict[str, bool] = {_CLIENT: False, _UPSTREAM: False}
        """Whether we have passed the other side's FIN on to each side."""
        self.registered: dict[str, int] = {_CLIENT: 0, _UPSTREAM: 0}

    def sock(self, side: str) -> socket.socket:
        return self.client if side == _CLIENT else self.upstream


def _other(side: str) -> str:
    return _UPSTREAM if side == _CLIENT else _CLIENT


class TcpProxy:
    """A TCP proxy from ``127.0.0.1:port`` to ``target``, with switches for network faults.

    One selector thread forwards every connection (non-blocking, at most ``buffer_limit``
    bytes buffered per direction, at most ``max_connections`` at once: more are reset). A FIN
    is passed on once the bytes before it are delivered (half-close is kept: a connection
    counts as open until both sides have closed); a RST or error on one side resets both.
    When the target refuses, the client is reset. The control methods are synchronous: when
    they return, the proxy already behaves as asked.

    :param target: ``(host, port)`` to forward to; each new connection connects anew, so a
        server that restarts on the same port is reached again.
    :param port: port to listen on; ``0`` picks a free one (see :attr:`port`).
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = 64,
        buffer_limit: int = 1 << 20,
    ) -> None:
        self.target = target
        self.max_connections = max_connections
        self.buffer_limit = buffer_limit
        info = socket.getaddrinfo(target[0], target[1], type=socket.SOCK_STREAM)[0]
        self._target_family, self._target_addr = info[0], info[4]
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.host: str = self._listener.getsockname()[0]
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, _READ, None)
        self._listening = False
        self._conns: set[_Conn] = set()
        self._accepted = 0
        self._paused = False
        self._refuse = False
        self._stopping = False
        self._closed = False
        self._commands: list[tuple[Callable[[], None], threading.Event, list[BaseException]]]
        self._commands = []
        self._commands_lock = threading.Lock()
        self._changed = threading.Condition()
        self.error: BaseException | None = None
        """An unexpected exception that ended the proxy thread (re-raised by :meth:`close`)."""
        self._update_listener()
        self._thread = threading.Thread(
            target=self._run, name=f"faults-TcpProxy-{self.port}", daemon=True
        )
        self._thread.start()

    # -- public ------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the proxy listens on."""
        return self.host, self.port

    @property
    def connection_count(self) -> int:
        """Proxied connections currently open (including blackholed ones)."""
        return len(self._conns)

    @property
    def accepted_count(self) -> int:
        """Connections accepted and forwarded since the proxy started."""
        return self._accepted

    def blackhole(self) -> None:
        """Make every existing connection half-open: silently drop all bytes both ways.

        The sockets stay open (no RST, no FIN to either side; a side's own FIN or RST is not
        passed on either); bytes not yet forwarded are dropped. New connections are forwarded
        normally.
        """

        def command() -> None:
            for conn in self._conns:
                conn.blackholed = True
                conn.buffers[_CLIENT].clear()
                conn.buffers[_UPSTREAM].clear()
                self._update(conn)

        self._call(command)

    def reset_all(self) -> None:
        """Close every existing connection abruptly: both the client and the target get RST."""

        def command() -> None:
            for conn in list(self._conns):
                self._close_conn(conn, abrupt=True)

        self._call(command)

    def pause_new(self, paused: bool = True, *, refuse: bool = False) -> None:
        """Hold or refuse new connections; ``pause_new(False)`` forwards them again.

        :param paused: while true, new connections are not forwarded; existing ones are
            unaffected.
        :param refuse: while paused, reset new connections at once (the client sees the
            connection reset or closed) instead of holding them in the listen backlog (the
            client's connect completes but no byte is answered until the pause ends).
            ``blackhole()`` then ``pause_new()`` is a full partition: nothing gets through.
        """

        def command() -> None:
            self._paused = paused
            self._refuse = refuse
            self._update_listener()

        self._call(command)

    def wait_connections(self, count: int, timeout: float = 10.0) -> None:
        """Wait until exactly ``count`` connections are open.

        :raises TimeoutError: after ``timeout`` seconds.
        """
        self._wait(lambda: len(self._conns) == count, timeout, f"{count} open connections")

    def wait_accepted(self, count: int, timeout: float = 10.0) -> None:
        """Wait until at least ``count`` connections have been accepted in total.

        :raises TimeoutError: after ``timeout`` seconds.
        """
        self._wait(lambda: self._accepted >= count, timeout, f"{count} accepted connections")

    def close(self) -> None:
        """Stop the proxy: reset every connection, close the listener, end the thread.

        Idempotent; returns within about a second.

        :raises RuntimeError: when the proxy thread had died of an unexpected exception.
        """
        if not self._closed:
            self._closed = True
            self._stopping = True
            self._wake()
            self._thread.join(1.0)
            if not self._thread.is_alive():
                self._sel.close()
                self._wake_r.close()
                self._wake_w.close()
        if self.error is not None:
            raise RuntimeError("the TcpProxy thread failed") from self.error

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<TcpProxy 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]}, "
            f"{len(self._conns)} open>"
        )

    # -- control plumbing --------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _call(self, command: Callable[[], None], timeout: float = 10.0) -> None:
        if self._closed or not self._thread.is_alive():
            raise RuntimeError("the TcpProxy is closed") from self.error
        done = threading.Event()
        failure: list[BaseException] = []
        with self._commands_lock:
            self._commands.append((command, done, failure))
        self._wake()
        if not done.wait(timeout):
            raise TimeoutError("the TcpProxy thread did not answer") from self.error
        if failure:
            raise failure[0]

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise TimeoutError(
                    f"waited {timeout}s for {what}; {len(self._conns)} open, "
                    f"{self._accepted} accepted"
                )

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, mask in self._sel.select(timeout=1.0):
                    if key.fileobj is self._wake_r:
                        self._run_commands()
                    elif key.fileobj is self._listener:
                        self._accept()
                    else:
                        conn, side = key.data
                        if not conn.closed:
                            self._service(conn, side, mask)
        except BaseException as exc:
            self.error = exc
        finally:
            for conn in list(self._conns):
                self._close_conn(conn, abrupt=True)
            if self._listening:
                self._sel.unregister(self._listener)
            self._listener.close()
            self._run_commands()  # fail nobody silently: answer what is queued
            self._notify()

    def _run_commands(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        with self._commands_lock:
            commands, self._commands = self._commands, []
        for command, done, failure in commands:
            try:
                command()
            except Exception as exc:
                failure.append(exc)
            finally:
                done.set()

    def _update_listener(self) -> None:
        want = not self._paused or self._refuse
        if want and not self._listening:
            self._sel.register(self._listener, _READ, None)
        elif not want and self._listening:
            self._sel.unregister(self._listener)
        self._listening = want

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ECONNABORTED, EMFILE: drop this one, go on
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                continue
            if self._paused or len(self._conns) >= self.max_connections:
                _abort(client)
                continue
            client.setblocking(False)
            upstream = socket.socket(self._target_family, socket.SOCK_STREAM)
            upstream.setblocking(False)
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client, upstream)
            self._conns.add(conn)
            self._accepted += 1
            result = upstream.connect_ex(self._target_addr)
            if result not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
                self._close_conn(conn, abrupt=True)
            else:
                self._update(conn)
            self._notify()

    def _service(self, conn: _Conn, side: str, mask: int) -> None:
        sock = conn.sock(side)
        if conn.connecting and side == _UPSTREAM:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._close_conn(conn, abrupt=True)
                return
            conn.connecting = False
        else:
            if mask & _READ:
                self._read(conn, side)
            if not conn.closed and mask & _WRITE:
                self._write(conn, side)
        if not conn.closed:
            self._finish_or_update(conn)

    def _read(self, conn: _Conn, side: str) -> None:
        try:
            data = conn.sock(side).recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            if conn.blackholed:
                conn.eof[side] = True  # a silent network passes no RST on either
            else:
                self._close_conn(conn, abrupt=True)
            return
        if not data:
            conn.eof[side] = True
        elif not conn.blackholed:
            conn.buffers[_other(side)] += data

    def _write(self, conn: _Conn, side: str) -> None:
        buffer = conn.buffers[side]
        try:
            sent = conn.sock(side).send(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_conn(conn, abrupt=True)
            return
        del buffer[:sent]

    def _finish_or_update(self, conn: _Conn) -> None:
        if not conn.blackholed:
            for side in (_CLIENT, _UPSTREAM):
                # pass a FIN on once everything before it is delivered
                if conn.eof[_other(side)] and not conn.buffers[side] and not conn.shut[side]:
                    conn.shut[side] = True
                    try:
                        conn.sock(side).shutdown(socket.SHUT_WR)
                    except OSError:
                        self._close_conn(conn, abrupt=True)
                        return
            if all(conn.shut.values()):
                self._close_conn(conn, abrupt=False)
                return
        elif all(conn.eof.values()):
            self._close_conn(conn, abrupt=False)
            return
        self._update(conn)

    def _update(self, conn: _Conn) -> None:
        for side in (_CLIENT, _UPSTREAM):
            sock = conn.sock(side)
            if conn.connecting:
                events = _WRITE if side == _UPSTREAM else 0
            elif conn.blackholed:
                events = 0 if conn.eof[side] else _READ
            else:
                events = 0
                if not conn.eof[side] and len(conn.buffers[_other(side)]) < self.buffer_limit:
                    events |= _READ
                if conn.buffers[side]:
                    events |= _WRITE
            old = conn.registered[side]
            if events == old:
                continue
            if old == 0:
                self._sel.register(sock, events, (conn, side))
            elif events == 0:
                self._sel.unregister(sock)
            else:
                self._sel.modify(sock, events, (conn, side))
            conn.registered[side] = events

    def _close_conn(self, conn: _Conn, *, abrupt: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        for side in (_CLIENT, _UPSTREAM):
            sock = conn.sock(side)
            if conn.registered[side]:
                self._sel.unregister(sock)
                conn.registered[side] = 0
            if abrupt:
                _abort(sock)
            else:
                sock.close()
        self._conns.discard(conn)
        self._notify()


@pytest.fixture(name="server_proxy")
def server_proxy_fixture(private_server: PrivateServer) -> Iterator[TcpProxy]:
    """A :class:`TcpProxy` in front of the ``private_server`` fixture's server.

    Connect through it with ``private_server.dsn_at(server_proxy.port)``.
    """
    with TcpProxy(("127.0.0.1", private_server.port)) as proxy:
        yield proxy
