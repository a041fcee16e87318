"""A fleet sharing one store: three real ``hirefire-exporter serve`` processes with ``--share``.

- polled for several ``max_age`` periods, they cause one collection per ``max_age`` between them, counted on the
  broker (a private redis-server: INFO commandstats), and all serve the same figure;
- the collector killed with SIGKILL mid-cycle is replaced within one lease, and nobody collects in its place
  before that lease runs out;
- the store stalled (SIGSTOP) or gone (SIGKILL) means every process collects for itself, answering 200 with the
  right figures; started again, the fleet shares again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import free_port
from faultproxy import FaultProxy, RedisProcess, wait_port
from support import command_counts, http_get, samples, wait_until

from hirefire_exporter.sharing import lease_seconds

rq = pytest.importorskip("rq")

TOKEN = "fleet-token"
INFO = f"/hirefire/{TOKEN}/info"
#: Each RQ cycle on one queue sends one LLEN (the queue's list; its intermediate list is read only where it exists).
LLEN_PER_CYCLE = 1


class Fleet:
    """``serve`` processes sharing one store, measuring one RQ queue on ``broker``."""

    def __init__(self, tmp_path, broker: str, share: str, *, size: int = 3, **settings: float) -> None:
        config = tmp_path / "fleet.toml"
        config.write_text(
            f'token = "{TOKEN}"\n[[procs]]\nname = "worker"\nbackend = "rq"\nurl = "{broker}"\nqueues = ["default"]\n'
        )
        self.ports = [free_port() for _ in range(size)]
        flags = [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "hirefire_exporter", "serve", "--config", str(config), "--share", share,
                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING", *flags],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for port in self.ports
        ]  # fmt: skip
        for port in self.ports:
            wait_port(port, timeout=20)
        self.answers: list[tuple[float, int, int, float | None]] = []  # (time, process, status, value)
        self._polling = threading.Event()
        self._poller: threading.Thread | None = None

    def get(self, index: int, path: str = INFO) -> tuple[int, bytes]:
        return http_get(self.ports[index], path, timeout=10)

    def value(self, index: int) -> tuple[int, float | None]:
        status, body = self.get(index)
        return status, json.loads(body)[0]["value"] if status == 200 else None

    def alive(self) -> list[int]:
        return [i for i, process in enumerate(self.processes) if process.poll() is None]

    def index_of(self, pid: int) -> int:
        return next(i for i, process in enumerate(self.processes) if process.pid == pid)

    def all_report(self, expected: int, timeout: float = 15) -> None:
        wait_until(
            lambda: all(self.value(i) == (200, expected) for i in self.alive()),
            timeout=timeout,
            what=f"every process to report {expected}",
        )

    def shared_flags(self) -> list[float]:
        return [samples(self.get(i, "/metrics")[1].decode(), "hirefire_snapshot_shared")[()] for i in self.alive()]

    def poll(self) -> None:
        """From now on, ask every live process for /info in turn, as HireFire and scrapers would, every 50 ms."""

        def run() -> None:
            while not self._polling.is_set():
                for index in self.alive():
                    try:
                        status, value = self.value(index)
                    except OSError:  # killed between alive() and the request: only a live one must answer
                        if self.processes[index].poll() is not None:
                            continue
                        status, value = -1, None
                    self.answers.append((time.monotonic(), index, status, value))
                time.sleep(0.05)

        self._poller = threading.Thread(target=run, daemon=True)
        self._poller.start()

    def stop_polling(self) -> None:
        self._polling.set()
        if self._poller is not None:
            self._poller.join(15)
        self._polling.clear()

    def answers_since(self, since: float) -> list[tuple[int, float | None]]:
        return [(status, value) for at, _, status, value in self.answers if at >= since]

    def stop(self) -> None:
        self.stop_polling()
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            if process.stderr is not None:
                process.stderr.close()


@pytest.fixture
def store(killable_redis: RedisProcess) -> RedisProcess:
    """The shared store: a redis-server of the test's own, to stop, kill and start again."""
    return killable_redis


@pytest.fixture
def broker(private_redis) -> tuple[object, str]:
    kwargs = private_redis.connection_pool.connection_kwargs
    return private_redis, f"redis://{kwargs['host']}:{kwargs['port']}/0"


@pytest.fixture
def fleets() -> Iterator[list[Fleet]]:
    started: list[Fleet] = []
    yield started
    for fleet in started:
        fleet.stop()


def enqueue(connection, n: int) -> None:
    for _ in range(n):
        rq.Queue("default", connection=connection).enqueue("rq_jobs.noop")


def collections(connection) -> float:
    return command_counts(connection).get("llen", 0) / LLEN_PER_CYCLE


def test_three_processes_sharing_a_store_collect_once_per_max_age_and_serve_one_figure(tmp_path, broker, store, fleets):
    connection, broker_url = broker
    enqueue(connection, 5)
    fleet = Fleet(tmp_path, broker_url, store.url, max_age=1)
    fleets.append(fleet)
    fleet.all_report(5)

    connection.config_resetstat()
    started = time.monotonic()
    fleet.poll()
    time.sleep(6)
    fleet.stop_polling()
    elapsed = time.monotonic() - started
    cycles = collections(connection)

    # Unshared, every process would collect once per max_age: 3 x 6 = 18 cycles.
    assert elapsed / 1 - 2 <= cycles <= elapsed / 1 + 1, f"{cycles} cycles in {elapsed:.1f}s with max_age 1"
    answers = fleet.answers_since(started)
    assert len(answers) > 100 and set(answers) == {(200, 5)}
    assert sorted(fleet.shared_flags()).count(1.0) >= 1  # some serve what another collected...
    enqueue(connection, 2)
    fleet.all_report(7, timeout=5)  # ...and a new figure reaches every process within about max_age


def test_a_collector_killed_mid_cycle_is_replaced_within_one_lease(tmp_path, broker, store, fleets):
    connection, _ = broker
    enqueue(connection, 4)
    timeout = 4.0
    lease = lease_seconds(timeout)
    with FaultProxy("127.0.0.1", connection.connection_pool.connection_kwargs["port"]) as proxy:
        fleet = Fleet(tmp_path, f"redis://127.0.0.1:{proxy.port}/0", store.url, max_age=1, timeout=timeout)
        fleets.append(fleet)
        fleet.all_report(4)
        store_client = store.client()
        (snapshot_key,) = store_client.keys("*:snapshot")
        lease_key = snapshot_key.decode().replace(":snapshot", ":lease")

        def live_lease() -> tuple[int, float] | None:
            """The collector's pid and when (monotonic) it took the lease, while a cycle runs."""
            value, left = store_client.get(lease_key), store_client.pttl(lease_key)
            if value is None or value.endswith(b" published") or left < 0:
                return None
            return int(value.split(b"/")[1]), time.monotonic() - (lease * 1000 - left) / 1000

        proxy.slow(0.6)  # a cycle now takes a second or two: long enough to kill its collector in the middle
        fleet.poll()
        leader, leader_since = wait_until(live_lease, timeout=10, what="a collector to start a cycle")
        os.kill(leader, signal.SIGKILL)
        fleet.processes[fleet.index_of(leader)].wait(5)
        killed_at = time.monotonic()

        def successor() -> tuple[int, float] | None:
            found = live_lease()
            return found if found is not None and found[0] != leader else None

        follower, follower_since = wait_until(successor, timeout=lease + 5, what="another collector")
        took_over = follower_since - leader_since
        assert lease - 0.5 <= took_over <= lease + 1.5, f"taken over {took_over:.2f}s after the lease began"
        assert follower in [fleet.processes[i].pid for i in fleet.alive()]
        proxy.normal()
        enqueue(connection, 3)
        fleet.all_report(7, timeout=lease + 5)
        fleet.stop_polling()
    # The survivors answered throughout: the figure last published, then the new ones (the 3 jobs arrive one by one).
    answers = fleet.answers_since(killed_at)
    assert answers and set(answers) <= {(200, 4), (200, 5), (200, 6), (200, 7)}


def test_a_store_that_stalls_or_dies_means_every_process_collects_for_itself(tmp_path, broker, store, fleets):
    connection, broker_url = broker
    enqueue(connection, 3)
    fleet = Fleet(tmp_path, broker_url, store.url, max_age=1)
    fleets.append(fleet)
    fleet.all_report(3)

    for fault, label in ((store.pause, "stalled"), (store.kill, "down")):
        fault()  # SIGSTOP: connections stay open and nothing answers; then SIGKILL: refused
        started = time.monotonic()
        fleet.poll()
        enqueue(connection, 2)
        expected = 5 if label == "stalled" else 7
        fleet.all_report(expected, timeout=10)  # each collected the new figure itself
        connection.config_resetstat()
        time.sleep(4)
        cycles = collections(connection)
        fleet.stop_polling()
        # One collector would make at most 5 cycles in 4 s; three collecting for themselves make about 12.
        assert cycles >= 8, f"store {label}: {cycles} cycles in 4 s from 3 processes, max_age 1"
        assert set(fleet.shared_flags()) == {0.0}, f"store {label}: a process served a shared snapshot"
        answers = fleet.answers_since(started)
        assert answers and {status for status, _ in answers} == {200}, f"store {label}: {set(answers)}"

    store.start()  # back on the same port: the fleet shares again without a restart
    wait_until(lambda: 1.0 in fleet.shared_flags(), timeout=15, what="a process to serve a shared snapshot again")
    fleet.poll()
    connection.config_resetstat()
    time.sleep(4)
    fleet.stop_polling()
    assert collections(connection) <= 4 / 1 + 1


def test_a_fleet_starting_together_answers_every_first_request(tmp_path, broker, store, fleets):
    """The first request of each process arrives at once: one wins the lease, the others wait for its snapshot
    (as a lone process waits for its first cycle) instead of answering 503. The broker answers 0.3 s late, so that
    the first cycle is still running when the others ask."""
    connection, _ = broker
    enqueue(connection, 5)
    with FaultProxy("127.0.0.1", connection.connection_pool.connection_kwargs["port"]) as proxy:
        proxy.slow(0.3)
        fleet = Fleet(tmp_path, f"redis://127.0.0.1:{proxy.port}/0", store.url, max_age=1)
        fleets.append(fleet)
        with ThreadPoolExecutor(3) as pool:
            first = list(pool.map(fleet.value, range(3)))
    assert first == [(200, 5)] * 3
