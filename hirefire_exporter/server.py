"""The standalone HTTP server of ``hirefire-exporter serve``: waitress, sized for many idle and slow connections.

Waitress reads requests in one event loop and hands only complete requests to its worker threads, so a slow client
(one header line every few seconds) or an idle keep-alive connection costs a socket, not a thread. Three things
stand between that and 1,000 open connections, each measured (``bench/connections.py``):

- waitress stops accepting at ``connection_limit`` open connections (default 100): past it a healthy client waits
  in the listen backlog until some other connection closes;
- its default loop uses ``select()``, which cannot watch a descriptor numbered 1024 or more: the loop raises and the
  server stops serving. ``poll()`` has no such ceiling;
- every connection is a file descriptor, and the common soft limit is 1024: accepting fails with EMFILE. The soft
  limit is raised towards the hard one, as far as the connection limit needs.

On SIGTERM or SIGINT it waits at most a second for requests in flight (waitress waits 5 s): a request held by a
first cycle on a stalled broker must not delay the stop.
"""

from __future__ import annotations

import logging
import resource
import signal
import socket
import threading
from typing import TYPE_CHECKING, Any

from . import __version__
from .procs.base import ProcConfigError

if TYPE_CHECKING:
    from .app import ExporterApp

log = logging.getLogger("hirefire_exporter")

#: Descriptors kept for everything but client connections: broker connections, the loop's trigger pipe, logs.
RESERVED_FILES = 256


def raise_file_limit(wanted: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards ``wanted`` (at most to the hard limit); returns the soft
    limit it ends with (``wanted`` when it is unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a sandbox that refuses: serve with what there is
            log.debug("could not raise RLIMIT_NOFILE to %d", target, exc_info=True)
    return wanted if soft == resource.RLIM_INFINITY else soft


def _connection_limit(wanted: int) -> int:
    files = raise_file_limit(wanted + RESERVED_FILES)
    limit = min(wanted, files - RESERVED_FILES)
    if limit < wanted:
        log.warning(
            "--connection-limit %d lowered to %d: this process may open only %d files (ulimit -n)", wanted, limit, files
        )
    return max(limit, 1)


def _dispatcher() -> Any:
    from waitress.task import ThreadedTaskDispatcher

    class Dispatcher(ThreadedTaskDispatcher):
        def shutdown(self, cancel_pending: bool = True, timeout: float = 1.0) -> bool:
            return super().shutdown(cancel_pending, timeout)

    return Dispatcher()


def _check_listen(host: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise ProcConfigError(f"--port must be between 0 and 65535, not {port}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        raise ProcConfigError(f"--host {host!r}: cannot resolve it ({reason})") from None


def _listening(server: Any) -> str:
    listen = getattr(server, "effective_listen", None) or [(server.effective_host, server.effective_port)]
    return ", ".join(f"http://[{h}]:{p}/" if ":" in str(h) else f"http://{h}:{p}/" for h, p in listen)


def serve(
    app: ExporterApp,
    *,
    host: str,
    port: int,
    threads: int,
    connection_limit: int,
    channel_timeout: int = 120,
) -> int:
    """Serve ``app`` until SIGTERM or SIGINT; returns the exit status (0).

    ``connection_limit``: open connections accepted at once (idle keep-alive and slow ones included); the process's
    descriptor limit is raised to fit it. ``channel_timeout``: seconds after which a connection that sent nothing is
    closed. Raises :class:`ProcConfigError` (one line) when the server cannot listen on ``host``:``port``.
    """
    from waitress.server import create_server

    _check_listen(host, port)
    sockets: dict[int, Any] = {}  # waitress' socket map, ours so that a failed bind can close what it opened
    dispatcher = _dispatcher()
    try:
        server = create_server(
            app,
            map=sockets,
            host=host,
            port=port,
            threads=threads,
            connection_limit=_connection_limit(connection_limit),
            channel_timeout=channel_timeout,
            asyncore_use_poll=True,
            ident="hirefire-exporter",
            _dispatcher=dispatcher,
        )
    except OSError as exc:
        for dispatcher in list(sockets.values()):
            dispatcher.close()
        raise ProcConfigError(f"cannot listen on {host}:{port} (--host, --port): {exc.strerror or exc}") from None
    dispatcher.set_thread_count(threads)  # only now: a server that cannot listen leaves no threads behind
    app.collection.refresh_in_background()  # the first cycle now, not at the first request: /readyz waits for it

    def stop(signum: int, _frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "hirefire-exporter %s serving on %s (procs: %s)",
        __version__,
        _listening(server),
        ", ".join(p.name for p in app.collection.procs),
    )
    try:
        server.run()
    except SystemExit:
        pass
    finally:
        close_server(server)
        app.collection.close()
        log.info("stopped")
    return 0


def close_server(server: Any, loop: threading.Thread | None = None) -> None:
    """Close a waitress server and everything on its socket map, so that nothing writes to a closed descriptor.

    waitress wakes its loop by writing ``b"x"`` to a pipe (its trigger) and closes that pipe with ``os.close``: a
    request thread that finished after the close would write into whatever file took that descriptor number next (in
    a process that goes on, such as a test run, another subprocess's stdout). So the wake-up is switched off before
    the pipe is closed; a request thread still running then finds its connection closed. (On SIGTERM ``serve``'s
    request threads have had their second already: waitress stops them when its loop ends.) ``loop``: the thread
    running ``server.run()``, where it still runs: the closing is then done on that thread, at its next wake-up, so
    that no descriptor is closed under its ``select``, and waited for."""

    def close() -> None:
        server.trigger.pull_trigger = _no_wake_up  # what channels call, through server.pull_trigger(), from now on
        for dispatcher in list(getattr(server, "_map", {}).values()):  # its channels, the trigger, the listener
            dispatcher.close()
        server.close()

    if loop is not None and loop.is_alive():
        server.trigger.pull_trigger(close)  # run by the loop when the trigger wakes it; an empty map ends the loop
        loop.join(5)
        if not loop.is_alive():
            return
    close()


def _no_wake_up(thunk: Any = None) -> None:
    """waitress's trigger once its pipe is closed: nothing left to wake."""
