"""The dispatcher: sends buffered request queue times to HireFire from a background thread.

Requests only append to an in-memory buffer ``{unix_second: [ms, ...]}`` (a lock and a list append). A daemon thread
POSTs the buffer as JSON to ``HIREFIRE_DISPATCH_URL`` every ``interval`` seconds, with the headers ``HireFire-Token``
and ``HireFire-Resource``. HireFire's answer may retune the dispatcher through ``HireFire-Resource-Dispatch-Interval``,
``HireFire-Resource-Dispatch-Timeout`` and ``HireFire-Resource-Buffer-TTL`` (seconds). A failed POST puts its entries
back in the buffer, except those older than the TTL, which HireFire would ignore anyway.

The thread starts on the first measurement, in the process that measures: under a pre-forking server (gunicorn
``--preload``) each worker gets its own.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping

from . import __version__
from .redaction import describe_error, register, register_url

log = logging.getLogger("hirefire_exporter")

DEFAULT_URL = "https://logdrain.hirefire.io/"
RESOURCE = f"Python-hirefire-exporter-{__version__}"

#: Response headers HireFire tunes the dispatcher with -> (attribute, lowest, highest accepted value).
TUNING = {
    "HireFire-Resource-Dispatch-Interval": ("interval", 0.05, 3600.0),
    "HireFire-Resource-Dispatch-Timeout": ("timeout", 0.05, 300.0),
    "HireFire-Resource-Buffer-TTL": ("ttl", 1.0, 86400.0),
}

Buffer = dict[int, list[int]]


class DispatchError(Exception):
    """A POST to HireFire failed (its entries go back to the buffer)."""


def normalize_url(url: str) -> str:
    """``logdrain.hirefire.io`` -> ``https://logdrain.hirefire.io/`` (HireFire hands out URLs without a scheme)."""
    url = url.strip()
    if "://" not in url:
        url = "https://" + url
    scheme, _, rest = url.partition("://")
    if "/" not in rest:
        rest += "/"
    return f"{scheme}://{rest}"


class Dispatcher:
    """Buffers queue times (milliseconds, by unix second) and POSTs them to HireFire in the background."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        interval: float = 1.0,
        timeout: float = 5.0,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not token or not token.strip():
            raise ValueError("the request queue-time dispatcher needs the HireFire token (HIREFIRE_TOKEN)")
        register(token)
        register_url(url)
        self.url = normalize_url(url)
        self._token = token.strip()
        self.interval = interval
        self.timeout = timeout
        self.ttl = ttl
        self._clock = clock
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._buffer: Buffer = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._failing = False
        self.dispatched = 0  # successful POSTs, for tests and logs

    # -- the request side: never blocks beyond a lock, never raises ------------------------------------------

    def add(self, ms: int, at: float | None = None) -> None:
        """Buffer one queue time (``at``: when it was measured, unix seconds) and make sure the thread runs."""
        if os.getpid() != self._pid:  # forked: the parent's thread and buffer are not ours
            self._reset()
        second = int(self._clock() if at is None else at)
        with self._lock:  # the same lock as stop(): a request racing a stop never brings the thread back
            if self._stopping.is_set():  # stopped for good (shutting down): nothing would send it
                return
            self._buffer.setdefault(second, []).append(int(ms))
            if self._thread is None:
                self._start()

    def pending(self) -> Buffer:
        """A copy of what is waiting to be sent."""
        with self._lock:
            return {second: list(values) for second, values in self._buffer.items()}

    # -- the background side ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread (idempotent; after :meth:`stop`, starts it again)."""
        with self._lock:
            if self._thread is None:
                self._stopping.clear()
                self._start()

    def _start(self) -> None:
        """With the lock held."""
        self._thread = threading.Thread(target=self._run, name="hirefire-dispatcher", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def stop(self, flush: bool = True) -> None:
        """Stop the thread; with ``flush``, send what is still buffered (one attempt, bounded by ``timeout``)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping.set()
        if thread is not None and thread is not threading.current_thread():
            # the stop event ends its wait at once (whatever the interval): only a POST in flight remains, whose
            # connect and answer are each bounded by the timeout
            thread.join(2 * self.timeout + 1)
        atexit.unregister(self.stop)
        if flush:
            self.dispatch()

    @property
    def running(self) -> bool:
        """Whether the background thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.dispatch()

    def dispatch(self) -> bool:
        """Send the buffer now (one POST). True when it was delivered or empty; on failure the entries within the
        TTL go back to the buffer and the failure is logged (once per outage, at warning level)."""
        with self._lock:
            buffer, self._buffer = self._buffer, {}
        if not buffer:
            return True
        try:
            self._post(buffer)
        except Exception as exc:
            self._requeue(buffer)
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = True
            log.log(level, "hirefire-exporter: could not dispatch request queue times: %s", describe_error(exc))
            return False
        if self._failing:
            log.info("hirefire-exporter: dispatching request queue times again")
        self._failing = False
        self.dispatched += 1
        return True

    def _requeue(self, buffer: Buffer) -> None:
        oldest = int(self._clock() - self.ttl)
        with self._lock:
            for second, values in buffer.items():
                if second >= oldest:
                    self._buffer.setdefault(second, [])[:0] = values

    def _post(self, buffer: Buffer) -> None:
        body = json.dumps({str(second): values for second, values in sorted(buffer.items())}).encode()
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "HireFire-Token": self._token, "HireFire-Resource": RESOURCE},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                self._tune(response.headers)
        except urllib.error.HTTPError as exc:
            raise DispatchError(f"HireFire answered {exc.code} {exc.reason}") from None

    def _tune(self, headers: Mapping[str, str]) -> None:
        for header, (attribute, lowest, highest) in TUNING.items():
            raw = headers.get(header)
            if raw is None:
                continue
            try:
                value = float(raw)
            except ValueError:
                log.debug("hirefire-exporter: ignoring %s: %r", header, raw)
                continue
            if lowest <= value <= highest:
                setattr(self, attribute, value)
