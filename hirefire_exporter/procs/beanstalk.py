"""A tiny beanstalkd client: just enough protocol to read per-tube job counts with ``stats-tube``.

The protocol is ASCII over TCP: a command line ends with ``\\r\\n``; a reply is a status line, and for ``OK``,
``RESERVED`` and ``FOUND`` a body whose size in bytes is the status line's last word, followed by ``\\r\\n``.
``stats-tube <tube>`` answers ``OK <bytes>`` with a YAML mapping (``current-jobs-ready: 3`` ...), or ``NOT_FOUND``
for a tube that does not exist (beanstalkd deletes a tube once it has no jobs and nobody uses or watches it).

Every call is bounded by one deadline, and the connection is closed when the ``with`` block that opened it ends.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterable

#: A tube name: ASCII letters, digits and ``-+/;.$_()``, not starting with ``-``, at most 200 bytes.
TUBE_NAME = re.compile(r"[A-Za-z0-9+/;.$_()][A-Za-z0-9+/;.$_()-]{0,199}")  # fullmatch: '$' allows a "\n" after
#: The counters of ``stats-tube`` this module reads, by job state.
STATES = {
    "ready": "current-jobs-ready",
    "reserved": "current-jobs-reserved",
    "delayed": "current-jobs-delayed",
    "buried": "current-jobs-buried",
}
_WITH_BODY = frozenset({"OK", "RESERVED", "FOUND"})
_MAX_BODY = 1 << 20  # stats replies are a few hundred bytes; anything near this is not beanstalkd talking


class BeanstalkError(Exception):
    """beanstalkd answered something other than what was asked for (or something else answered)."""


class Connection:
    """One connection to beanstalkd. Use it as a context manager so the socket is always closed.

    ``timeout`` bounds connecting, and then each call from its first byte sent to its last byte received (one
    deadline per call, not per ``recv``: a server that trickles bytes cannot stretch it).
    """

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._sock: socket.socket | None = socket.create_connection((host, port), timeout=timeout)
        self._buffer = bytearray()
        self._deadline = 0.0

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, line: str, body: bytes | None = None) -> tuple[list[str], bytes | None]:
        """Send one command (with a job body for ``put``) and return its reply's words and body."""
        return self.pipeline([(line, body)])[0]

    def pipeline(self, commands: Iterable[tuple[str, bytes | None]]) -> list[tuple[list[str], bytes | None]]:
        """Send every command in one write, then read the replies in order (beanstalkd answers in order)."""
        payload = bytearray()
        count = 0
        for line, body in commands:
            if "\r" in line or "\n" in line:
                raise ValueError(f"a beanstalkd command is one line, got {line!r}")
            payload += line.encode("ascii") + b"\r\n"
            if body is not None:
                payload += body + b"\r\n"
            count += 1
        self._deadline = time.monotonic() + self.timeout
        sock = self._socket()
        sock.settimeout(self.timeout)
        sock.sendall(payload)
        return [self._reply() for _ in range(count)]

    def stats_tubes(self, tubes: Iterable[str]) -> dict[str, dict[str, int] | None]:
        """Job counts by state (:data:`STATES`) for each tube, all in one round trip; None for a tube beanstalkd does
        not have (``NOT_FOUND``: it has no jobs, and no client uses or watches it)."""
        tubes = list(dict.fromkeys(tubes))
        for tube in tubes:
            if not TUBE_NAME.fullmatch(tube):
                raise ValueError(f"{tube!r} is not a beanstalkd tube name")
        replies = self.pipeline((f"stats-tube {tube}", None) for tube in tubes)
        out = {}
        for tube, (words, body) in zip(tubes, replies):
            if words == ["NOT_FOUND"]:
                out[tube] = None
            elif words[0] == "OK" and body is not None:
                out[tube] = _counts(tube, body)
            else:
                raise BeanstalkError(f"stats-tube {tube}: unexpected reply {' '.join(words)[:80]!r}")
        return out

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise BeanstalkError("the connection is closed")
        return self._sock

    def _reply(self) -> tuple[list[str], bytes | None]:
        line = self._read_line()
        words = line.decode("ascii", "replace").split()
        if not words:
            raise BeanstalkError("empty reply")
        if words[0] not in _WITH_BODY:
            return words, None
        try:
            size = int(words[-1])
        except ValueError:
            raise BeanstalkError(f"malformed reply {line[:80]!r}") from None
        if not 0 <= size <= _MAX_BODY:
            raise BeanstalkError(f"reply body of {size} bytes")
        data = self._read_exactly(size + 2)
        if data[-2:] != b"\r\n":
            raise BeanstalkError("reply body not terminated by CRLF")
        return words, data[:-2]

    def _read_line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > 1024:
                raise BeanstalkError(f"reply line too long: {bytes(self._buffer[:80])!r}")
            self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _fill(self) -> None:
        sock = self._socket()
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"beanstalkd at {self.host}:{self.port}: no complete reply within {self.timeout:g}s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise TimeoutError(
                f"beanstalkd at {self.host}:{self.port}: no complete reply within {self.timeout:g}s"
            ) from None
        if not chunk:
            raise BeanstalkError(f"beanstalkd at {self.host}:{self.port} closed the connection")
        self._buffer += chunk


def _counts(tube: str, body: bytes) -> dict[str, int]:
    """The job counters of a ``stats-tube`` body (flat YAML: ``key: value`` per line)."""
    fields = {}
    for raw in body.decode("utf-8", "replace").splitlines():
        key, sep, value = raw.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        return {state: int(fields[key]) for state, key in STATES.items()}
    except (KeyError, ValueError) as exc:
        raise BeanstalkError(f"stats-tube {tube}: no usable {exc} in the reply") from None
