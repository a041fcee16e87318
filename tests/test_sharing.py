"""The shared store (``share``): snapshots as versioned JSON, configurations kept apart by a digest without secrets,
one collector elected by a lease, and a store that is down or stalled meaning "collect locally", quickly.

Against the real Redis (the test database) and, for command counts and passwords, a private redis-server.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import subprocess
import sys
import threading
import time
from dataclasses import fields

import pytest
from conftest import free_port
from faultproxy import FaultProxy
from support import command_counts, wait_until

from hirefire_exporter import fingerprint, sharing
from hirefire_exporter.collection import Collection, ProcStatus, Snapshot
from hirefire_exporter.procs.base import Proc, ProcConfigError, QueueReading, Reading
from hirefire_exporter.procs.hotqueue import HotQueueProc
from hirefire_exporter.procs.rq import RQProc
from hirefire_exporter.sharing import SharedSnapshots, lease_seconds, snapshot_from_json, snapshot_to_json
from hirefire_exporter.snapshot_codec import SCHEMA, STRING, record

rq = pytest.importorskip("rq")


def every_kind_of_snapshot() -> Snapshot:
    """Every field, every kind of value: int and float counts, None and float latencies, a failed proc that keeps
    its last reading, one that never had any, a custom proc's reading without queues."""
    queues = (
        QueueReading("high", {"queued": 3, "started": 2, "failed": 7}, frozenset({"queued", "started"}), 12.5, True),
        QueueReading("low", {"queued": 0}, frozenset({"queued"}), 0.0, False),
        QueueReading("odd", {"queued": 2.0, "reserved": 1}, frozenset(), None, None),
    )
    return Snapshot(
        collected_at=1_796_000_000.25,
        procs=(
            ProcStatus("worker", "size", Reading(5, queues[:2], 12.5), 1_796_000_000.25, True, None, 0.004),
            ProcStatus("odd", "latency", Reading(2.0, queues[2:], None), 1_795_999_950.0, False, "TimeoutError: x", 3),
            ProcStatus("custom", "size", Reading(9), 1_796_000_000.0, True, None, 0.1),
            ProcStatus("never", "size", None, None, False, "ConnectionError: refused", 0.5),
        ),
        stale_after=60,
        shared=True,
    )


def same(a: object, b: object) -> bool:
    """Equal, and of the same types all the way down (3 == 3.0 in Python; not here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)  # type: ignore[index]
    if hasattr(a, "__dataclass_fields__"):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))  # type: ignore[arg-type]
    return a == b


# --- the format ----------------------------------------------------------------------------------------------------


def test_a_snapshot_survives_the_round_trip_exactly_except_where_it_came_from():
    snapshot = every_kind_of_snapshot()
    data = snapshot_to_json(snapshot)
    back = snapshot_from_json(data)
    assert data.startswith(b'{"schema":%d,' % SCHEMA)  # the schema number first: any release can refuse it
    assert same(back, snapshot.__class__(**{**snapshot.__dict__, "shared": False}))  # "shared" is the reader's
    assert type(back.procs[1].reading.quantity) is float and type(back.procs[0].reading.quantity) is int
    assert back.procs[0].reading.queues[0].counted == frozenset({"queued", "started"})
    assert back.procs[1].reading.queues[0].latency is None and back.procs[3].reading is None
    assert [q.found for q in back.procs[0].reading.queues + back.procs[1].reading.queues] == [True, False, None]
    assert snapshot_to_json(back) == data  # deterministic: sets are written sorted


def test_a_real_cycle_round_trips(redis_conn, redis_url):
    for _ in range(4):
        rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    snapshot = Collection([RQProc("worker", queues=["default", "empty"], url=redis_url)]).collect()
    back = snapshot_from_json(snapshot_to_json(snapshot))
    assert same(back, snapshot) and back.procs[0].reading.quantity == 4


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "not a snapshot"),
        (b"\xff\xfe", "not a snapshot"),
        (b"[1, 2]", "schema None"),
        (b'{"schema": %d, "snapshot": {}}' % (SCHEMA + 1), f"schema {SCHEMA + 1}"),  # the next release's format
        (b'{"schema": %d, "snapshot": {}}' % (SCHEMA - 1), f"schema {SCHEMA - 1}"),  # the previous release's
        (b'{"schema": true, "snapshot": {}}', "schema True"),
        (b'{"schema": %d.0, "snapshot": {}}' % SCHEMA, f"schema {SCHEMA}.0"),
        (b'{"snapshot": {}, "schema": "1"}', "schema '1'"),
        (
            b'{"schema": %d, "snapshot": {"collected_at": 1, "procs": [], "stale_after": 60}, "x": 1}' % SCHEMA,
            "fields differ",
        ),
        (b'{"schema": %d, "snapshot": {"collected_at": 1, "procs": []}}' % SCHEMA, "missing ['stale_after']"),
        (b'{"schema": %d, "snapshot": {"collected_at": "1", "procs": [], "stale_after": 60}}' % SCHEMA, "collected_at"),
        (b'{"schema": %d, "snapshot": {"collected_at": NaN, "procs": [], "stale_after": 60}}' % SCHEMA, "NaN"),
        (b'{"schema": %d, "snapshot": {"collected_at": 1e999, "procs": [], "stale_after": 60}}' % SCHEMA, "finite"),
        (
            b'{"schema": %d, "snapshot": {"collected_at": true, "procs": [], "stale_after": 60}}' % SCHEMA,
            "a finite number",
        ),
        (
            b'{"schema": %d, "snapshot": {"collected_at": 1, "procs": {}, "stale_after": 60}}' % SCHEMA,
            "procs: expected a list",
        ),
        (b"[" * 100_000, "not a snapshot"),
    ],
)
def test_anything_but_this_releases_format_is_refused(data, why):
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
        snapshot_from_json(data)


def test_a_field_of_another_type_deep_inside_is_refused():
    document = json.loads(snapshot_to_json(every_kind_of_snapshot()))
    document["snapshot"]["procs"][0]["reading"]["queues"][0]["jobs"]["queued"] = "3"
    with pytest.raises(ValueError, match=r"procs\[0\]\.reading\.queues\[0\]\.jobs\['queued'\]"):
        snapshot_from_json(json.dumps(document))
    document = json.loads(snapshot_to_json(every_kind_of_snapshot()))
    document["snapshot"]["procs"][0]["reading"]["queues"][0]["counted"] = "queued"
    with pytest.raises(ValueError, match="counted: expected a list"):
        snapshot_from_json(json.dumps(document))


def test_a_record_field_left_out_of_the_format_fails_at_import_not_in_production():
    with pytest.raises(TypeError, match=r"QueueReading .*missing \['counted', 'found', 'jobs', 'latency'\]"):
        record(QueueReading, {"name": STRING})


# --- configurations ------------------------------------------------------------------------------------------------

BASE = "redis://app:s3cret-one@127.0.0.1:6379/2"


def rq_procs(url: str = BASE, **options) -> list[Proc]:
    procs = [
        RQProc("worker", queues=["high", "default"], url=url, **options),
        HotQueueProc("mailer", ["mail"], url=url),
    ]
    for proc in procs:
        proc.validate()
    return procs


def share_digest(procs: list[Proc], stale_after: float = 60) -> str:
    return SharedSnapshots("redis://127.0.0.1:6379/2", procs, max_age=5, stale_after=stale_after, timeout=3).digest


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(lambda: rq_procs(BASE.replace(":6379", ":6380")), id="another port"),
        pytest.param(lambda: rq_procs(BASE.replace("127.0.0.1", "localhost")), id="another host"),
        pytest.param(lambda: rq_procs(BASE.replace("/2", "/3")), id="another database"),
        pytest.param(lambda: rq_procs(BASE.replace("app:", "other:")), id="another user"),
        pytest.param(lambda: rq_procs(key_prefix="rq2"), id="another RQ key prefix"),
        pytest.param(lambda: rq_procs(metric="latency"), id="another metric"),
        pytest.param(
            lambda: [RQProc("worker", ["high"], url=BASE), HotQueueProc("mailer", ["mail"], url=BASE)],
            id="other queues",
        ),
        pytest.param(
            lambda: [RQProc("web", ["high", "default"], url=BASE), HotQueueProc("mailer", ["mail"], url=BASE)],
            id="another name",
        ),
        pytest.param(lambda: rq_procs()[:1], id="one proc fewer"),
        pytest.param(lambda: rq_procs()[::-1], id="another order"),
    ],
)
def test_configurations_that_measure_something_else_get_another_digest(other):
    assert share_digest(other()) != share_digest(rq_procs())


def test_the_same_configuration_with_other_credentials_measures_the_same_thing():
    """Two apps reading the same queues on the same server as the same user share one snapshot whatever password
    each holds (never hashed): the figures are the same."""
    assert share_digest(rq_procs(BASE.replace("s3cret-one", "rotated-two"))) == share_digest(rq_procs())
    assert share_digest(rq_procs(), stale_after=120) != share_digest(rq_procs())  # judged by what is in the snapshot


def test_no_password_enters_the_digest():
    procs = [
        RQProc("worker", ["default"], url="redis://app:pw-in-user@127.0.0.1:6379/2"),
        RQProc("query", ["default"], url="redis://127.0.0.1:6379/2?password=pw-in-query&db=2"),
        HotQueueProc("hot", ["mail"], connection_params={"host": "127.0.0.1", "password": "pw-in-params"}),
    ]
    text = json.dumps(fingerprint.describe(procs))
    assert "pw-" not in text
    assert "127.0.0.1" in text and '"db": 2' in text  # what tells servers apart is kept


def test_every_process_computes_the_same_digest():
    """No memory address, no random or per-process value: replicas started apart must land on the same keys."""
    script = (
        "from hirefire_exporter.procs.rq import RQProc\n"
        "from hirefire_exporter.procs.hotqueue import HotQueueProc\n"
        "from hirefire_exporter.procs.huey import HueyProc\n"
        "from hirefire_exporter.procs.celery import CeleryProc\n"
        "from hirefire_exporter.sharing import SharedSnapshots\n"
        f"url = {BASE!r}\n"
        "procs = [RQProc('worker', ['default'], url=url), HotQueueProc('hot', ['mail'], connection_params={'db': 2}),\n"
        "         HueyProc('huey', storage='redis', url=url), CeleryProc('celery', ['celery'], url=url)]\n"
        "for p in procs: p.validate()\n"
        "print(SharedSnapshots('redis://127.0.0.1/2', procs, max_age=5, stale_after=60, timeout=3).digest)\n"
    )
    digests = {
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert len(digests) == 1 and len(digests.pop().strip()) == 32


def test_two_configurations_in_one_store_never_read_each_others_snapshot(redis_conn, redis_url):
    ours = SharedSnapshots(redis_url, rq_procs(), max_age=5, stale_after=60, timeout=3)
    theirs_procs = [RQProc("worker", ["high"], url=BASE), HotQueueProc("mailer", ["mail"], url=BASE)]
    theirs = SharedSnapshots(redis_url, theirs_procs, max_age=5, stale_after=60, timeout=3)
    assert theirs.acquire()
    theirs.publish(a_snapshot())
    assert ours.fetch() is None and ours.acquire()  # their lease is not ours either
    assert theirs.fetch() is not None


def test_a_bad_share_url_is_one_line_naming_the_setting_without_the_password():
    for url in ("redis://:pw-bad-1@127.0.0.1:notaport/0", "redis://:pw-bad-2@127.0.0.1/zero", "http://:pw-bad-3@x/"):
        with pytest.raises(ProcConfigError) as caught:
            SharedSnapshots(url, rq_procs(), max_age=5, stale_after=60, timeout=3)
        message = str(caught.value)
        assert message.startswith("share: ") and "\n" not in message and "pw-bad" not in message


# --- the lease -----------------------------------------------------------------------------------------------------


def store(redis_url: str, *, max_age: float = 5, timeout: float = 3, procs: list[Proc] | None = None):
    return SharedSnapshots(redis_url, procs or rq_procs(), max_age=max_age, stale_after=60, timeout=timeout)


def a_snapshot(quantity: int = 1, collected_at: float | None = None) -> Snapshot:
    now = time.time() if collected_at is None else collected_at
    statuses = (
        ProcStatus("worker", "size", Reading(quantity), now, True, None, 0.0),
        ProcStatus("mailer", "size", Reading(0), now, True, None, 0.0),
    )
    return Snapshot(now, statuses, 60)


def test_one_process_wins_the_lease_until_it_releases_it(redis_conn, redis_url):
    a, b, c = store(redis_url), store(redis_url), store(redis_url)
    assert a.acquire() and not b.acquire() and not c.acquire()
    assert a.lease_ms == lease_seconds(3) * 1000 == 5000
    assert 4000 < redis_conn.pttl(a.lease_key) <= 5000
    b.release()  # not b's: nothing happens
    assert not c.acquire()
    a.release()
    assert redis_conn.exists(a.lease_key) == 0
    assert c.acquire() and not a.acquire()


def test_a_lease_expires_on_its_own_when_its_holder_dies(redis_conn, redis_url):
    a, b = store(redis_url, timeout=0.1), store(redis_url, timeout=0.1)
    assert a.acquire()
    started = time.monotonic()
    wait_until(b.acquire, timeout=5, what="the dead holder's lease to expire")
    assert 1.9 < time.monotonic() - started < 3.5  # within one lease (timeout + 2 s)


def test_a_late_holder_neither_releases_nor_overwrites_the_lease_of_the_one_that_took_over(redis_conn, redis_url):
    late, next_one = store(redis_url), store(redis_url)
    assert late.acquire()
    redis_conn.pexpire(late.lease_key, 1)  # its cycle outlived the lease
    wait_until(next_one.acquire, timeout=2, what="the lease to pass on")
    late.release()
    late.publish(a_snapshot(quantity=1, collected_at=time.time() - 1))
    assert redis_conn.get(late.lease_key) == next_one.holder.encode()
    assert late.fetch() is None  # the late cycle started earlier: the new holder's will be fresher
    next_one.publish(a_snapshot(quantity=2))
    assert late.fetch().procs[0].reading.quantity == 2


def test_after_publishing_no_one_collects_again_until_the_snapshot_is_max_age_old(redis_conn, redis_url):
    """A process that read the old snapshot just before the collector published must not start a second
    collection right after the first: the lease becomes a mark that lasts until the snapshot is max_age old."""
    collector, reader = store(redis_url, max_age=1), store(redis_url, max_age=1)
    assert reader.fetch() is None  # the reader sees nothing fresh...
    assert collector.acquire()
    collector.publish(a_snapshot(quantity=7))
    collector.release()  # ...the collector is done...
    assert not reader.acquire()  # ...and the reader's attempt finds the mark, not an empty lease
    assert reader.fetch().procs[0].reading.quantity == 7
    assert 0 < redis_conn.pttl(collector.lease_key) <= 1000
    assert 0 < redis_conn.pttl(collector.snapshot_key) <= 61_000  # stale_after + max_age: useless after that
    wait_until(reader.acquire, timeout=3, what="the mark of a fresh snapshot to expire")


def test_a_process_with_nothing_to_serve_can_wait_for_the_collectors_first_snapshot(redis_conn, redis_url):
    collector, joiner = store(redis_url), store(redis_url)
    assert collector.acquire() and not joiner.acquire()
    timer = threading.Timer(0.5, lambda: collector.publish(a_snapshot(quantity=4)))
    timer.start()
    snapshot, seconds = timed(lambda: joiner.await_published(5))
    assert snapshot.procs[0].reading.quantity == 4 and 0.4 < seconds < 1.5
    redis_conn.flushdb()
    assert timed(lambda: joiner.await_published(0.3))[1] >= 0.3  # nobody publishes: the wait is bounded
    down = store(f"redis://127.0.0.1:{free_port()}/0")
    assert timed(lambda: down.await_published(5))[1] < 2.5  # a store that is down is not waited for (the 5 s)


def test_a_snapshot_older_than_max_age_when_published_leaves_no_mark(redis_conn, redis_url):
    collector, other = store(redis_url, max_age=1), store(redis_url, max_age=1)
    assert collector.acquire()
    collector.publish(a_snapshot(collected_at=time.time() - 2))  # a cycle that took longer than max_age
    collector.release()
    assert other.acquire()


def test_a_forked_worker_holds_a_lease_of_its_own(redis_conn, redis_url):
    """gunicorn imports the app once and forks: each worker must hold its own lease value, or one worker's release
    would delete another's lease."""
    parent = store(redis_url)
    parent_holder = parent.holder
    context = multiprocessing.get_context("fork")
    holders = context.SimpleQueue()
    child = context.Process(target=lambda: holders.put(parent.holder))  # forked: nothing is pickled
    child.start()
    child.join(10)
    child_holder = holders.get()
    assert child_holder != parent_holder and parent.holder == parent_holder
    assert child_holder.split("/")[1] == str(child.pid)


def test_two_collections_sharing_a_store_collect_once(private_redis):
    host, port = (
        private_redis.connection_pool.connection_kwargs["host"],
        private_redis.connection_pool.connection_kwargs["port"],
    )
    url = f"redis://{host}:{port}/0"
    for _ in range(3):
        rq.Queue("default", connection=private_redis).enqueue("rq_jobs.noop")
    collections = [
        Collection(
            [RQProc("worker", ["default"], url=url)],
            max_age=5,
            share=store(url, procs=[RQProc("worker", ["default"], url=url)]),
        )
        for _ in range(3)
    ]
    private_redis.config_resetstat()
    values = [c.snapshot().procs[0].reading.quantity for c in collections]
    assert values == [3, 3, 3]
    assert [c.cycles for c in collections] == [1, 0, 0]
    assert [c.latest.shared for c in collections] == [False, True, True]
    counts = command_counts(private_redis)
    assert (counts.get("llen"), counts.get("exists")) == (1, 1)  # one cycle: the queue and its mostly absent keys
    # The store: one GET of the snapshot per process; the collector's SET NX of the lease, then its publishing and
    # release scripts (the commands they run count too: GET lease, SET snapshot, SET lease; GET lease).
    assert counts.get("get") == 3 + 2 and counts.get("set") == 1 + 2


# --- a store that is down ------------------------------------------------------------------------------------------


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_a_store_nobody_listens_on_means_collect_locally_at_once(caplog):
    url = f"redis://:pw-down-store@127.0.0.1:{free_port()}/0"
    shared = store(url)
    caplog.set_level(logging.INFO, logger="hirefire_exporter")
    assert timed(shared.fetch)[0] is None
    assert shared.reachable is False
    for call, expected in ((shared.fetch, None), (shared.acquire, True)):
        result, seconds = timed(call)
        assert result is expected and seconds < 0.5
    shared.publish(a_snapshot())
    shared.release()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "collecting locally" in warnings[0].getMessage()
    assert "pw-down-store" not in caplog.text


def test_a_stalled_store_costs_one_short_timeout_then_is_left_alone_until_sharing_resumes(
    redis_conn, redis_url, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="hirefire_exporter")
    monkeypatch.setattr(sharing, "STORE_RETRY", 1.0)  # 5 s by default
    with FaultProxy("127.0.0.1", redis_conn.connection_pool.connection_kwargs["port"]) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/{redis_conn.connection_pool.connection_kwargs['db']}"
        shared = store(url, max_age=1)
        assert shared.fetch() is None and shared.reachable
        proxy.stall()
        cycle = [
            timed(shared.fetch),
            timed(shared.acquire),
            timed(lambda: shared.publish(a_snapshot())),
            timed(shared.release),
        ]
        assert [result for result, _ in cycle] == [None, True, None, None]
        assert cycle[0][1] < 0.9  # one socket timeout (0.5 s), no retry of a timeout
        assert sum(seconds for _, seconds in cycle[1:]) < 0.1  # the rest of the cycle does not ask again
        assert not shared.reachable
        time.sleep(1)  # STORE_RETRY later it is tried again (still stalled)
        assert 0.4 < timed(shared.acquire)[1] < 0.9
        proxy.normal()
        time.sleep(1)
        assert shared.acquire() is True and shared.reachable  # the store's answer: this time the real lease
        assert redis_conn.get(shared.lease_key) == shared.holder.encode()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if "shared store" in r.getMessage()]
    assert [level for level, _ in messages] == ["WARNING", "INFO"]  # once down, once back


def test_a_store_that_refuses_the_commands_means_collect_locally(redis_url, caplog):
    url = redis_url.replace("redis://", "redis://nobody:pw-refused@")  # no such user: every command refused
    shared = store(url)
    assert shared.fetch() is None and shared.acquire() is True and shared.reachable is False
    assert "pw-refused" not in caplog.text


def test_a_snapshot_of_another_release_is_ignored_not_misread(redis_conn, redis_url, caplog):
    shared = store(redis_url)
    redis_conn.set(shared.snapshot_key, b'{"schema":2,"snapshot":{"collected_at":1}}')
    assert shared.fetch() is None and shared.reachable
    assert shared.fetch() is None
    assert (
        len([r for r in caplog.records if "ignoring the snapshot" in r.getMessage() and r.levelno == logging.WARNING])
        == 1
    )


# --- secrets -------------------------------------------------------------------------------------------------------


def test_nothing_but_the_snapshot_reaches_the_store_and_no_password(private_redis, caplog):
    """Real procs with passwords in their URLs, a share URL with one: every key and value in the store is read
    back, and none holds a password, a URL or a proc's options."""
    kwargs = private_redis.connection_pool.connection_kwargs
    private_redis.acl_setuser("exporter", enabled=True, passwords=["+pw-proc-9f2"], keys=["*"], commands=["+@all"])
    try:
        base = f"redis://exporter:pw-proc-9f2@{kwargs['host']}:{kwargs['port']}"
        rq.Queue("default", connection=private_redis).enqueue("rq_jobs.noop")
        private_redis.rpush("hotqueue:mail", "m")
        procs = [
            RQProc("worker", ["default"], url=f"{base}/0"),
            HotQueueProc("mailer", ["mail"], url=f"{base}/0"),
            HotQueueProc("broken", ["mail"], url=f"redis://exporter:pw-wrong-77@{kwargs['host']}:{kwargs['port']}/0"),
        ]
        before = set(private_redis.keys("*"))
        share = SharedSnapshots(f"{base}/0", procs, max_age=5, stale_after=60, timeout=3)
        collection = Collection(procs, share=share)
        snapshot = collection.snapshot()
        assert [s.reading.quantity if s.reading else None for s in snapshot.procs] == [1, 1, None]
        written = set(private_redis.keys("*")) - before
        assert written == {share.snapshot_key.encode(), share.lease_key.encode()}
        values = [private_redis.get(key) for key in written]
        everything = b" ".join(written | {v for v in values if v})
        for secret in (b"pw-proc-9f2", b"pw-wrong-77", b"redis://", b"socket_timeout"):
            assert secret not in everything
        assert b"hotqueue:mail" not in everything  # keys of the broker are configuration, not figures
        assert "pw-proc-9f2" not in caplog.text and "pw-wrong-77" not in caplog.text
    finally:
        private_redis.acl_deluser("exporter")


def test_the_store_needs_only_a_user_limited_to_its_keys_and_five_commands(private_redis):
    """The ACL the docs give for the store: the exporter's keys only; GET, SET, DEL (in scripts), EVALSHA and
    SCRIPT LOAD."""
    kwargs = private_redis.connection_pool.connection_kwargs
    private_redis.acl_setuser(
        "share",
        enabled=True,
        passwords=["+pw-share-acl"],
        keys=["hirefire_exporter:*"],
        commands=["-@all", "+get", "+set", "+del", "+evalsha", "+script|load"],
    )
    try:
        url = f"redis://share:pw-share-acl@{kwargs['host']}:{kwargs['port']}/0"
        collector, reader = store(url, max_age=0.5), store(url, max_age=0.5)
        assert collector.acquire() and not reader.acquire()
        collector.release()
        assert collector.acquire()
        collector.publish(a_snapshot(quantity=3))
        collector.release()
        assert reader.fetch().procs[0].reading.quantity == 3
        assert collector.reachable and reader.reachable  # nothing was refused
        wait_until(reader.acquire, timeout=3, what="the fresh mark to expire")
        reader.publish(a_snapshot(collected_at=time.time() - 1))  # too old for a mark: the lease is deleted
        assert reader.reachable and private_redis.exists(reader.lease_key) == 0
    finally:
        private_redis.acl_deluser("share")
