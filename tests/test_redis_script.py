"""Reading Redis in a read-only server-side script: the same readings as plain pipelined commands, in calls small
enough not to hold Redis, recovering from a flushed script cache and falling back once when scripts are refused."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from celery_app_support import Blocker, app_for, unique
from support import command_counts, count_round_trips

from hirefire_exporter import celery_latency
from hirefire_exporter.collection import Collection
from hirefire_exporter.procs import redis_script
from hirefire_exporter.procs import rq as rq_backend
from hirefire_exporter.procs.base import QueueReading, Reading
from hirefire_exporter.procs.celery import CeleryProc
from hirefire_exporter.procs.hotqueue import HotQueueProc
from hirefire_exporter.procs.huey import HueyProc
from hirefire_exporter.procs.queues import QueuesProc
from hirefire_exporter.procs.redis_proc import RedisProc, read_redis_procs
from hirefire_exporter.procs.rq import RQProc

rq = pytest.importorskip("rq")
huey = pytest.importorskip("huey")
hotqueue = pytest.importorskip("hotqueue")


@pytest.fixture(autouse=True)
def _fresh_servers(monkeypatch):
    """What each server allows is learnt per process: each test starts from nothing learnt."""
    monkeypatch.setattr(redis_script, "_SERVERS", {})


def url_of(client, user: str = "") -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{user}{kwargs['host']}:{kwargs['port']}/0"


def fill_every_backend(client) -> list[RedisProc]:
    """Jobs in every state each backend reports, and one proc per backend reading them."""
    url = url_of(client)
    queue = rq.Queue("default", connection=client)
    client.delete(queue.enqueue("rq_jobs.noop").key)  # an expired id at the head
    for _ in range(3):
        queue.enqueue("rq_jobs.noop")
    queue.enqueue_in(timedelta(hours=1), "rq_jobs.noop")
    client.zadd("rq:wip:default", {"running": time.time() + 300, "dead-worker": time.time() - 30})
    client.zadd("rq:scheduled:default", {"due": time.time() - 5})

    celery_latency.enable()
    try:
        q, unstamped = unique("prio"), unique("unstamped")
        app = app_for(url, [[q, "", "direct", q, 0], [unstamped, "", "direct", unstamped, 0]])
        blocker = Blocker(app, client)
        for priority in (9, 0, 3, 6, 9):
            blocker.send(queue=q, priority=priority)
    finally:
        celery_latency.disable()
    Blocker(app, client).send(2, queue=unstamped)

    plain, priority = huey.RedisHuey("plain", url=url), huey.PriorityRedisHuey("prio", url=url)
    for instance in (plain, priority):

        @instance.task()
        def add(a, b):
            return a + b

        add(1, 2)
        add(3, 4)
        instance.add_schedule(add.s(2, 2, delay=86400))

    hotqueue.HotQueue("emails", host=client.connection_pool.connection_kwargs["host"],
                      port=client.connection_pool.connection_kwargs["port"]).put({"a": 1}, {"b": 2})  # fmt: skip
    client.rpush("plain-list", "x", "y", "z")
    return [
        RQProc("rq", queues=["default", "missing"], url=url, metric="latency"),
        CeleryProc("celery", queues=[q, unstamped, unique("empty")], app=app, metric="latency"),
        CeleryProc("celery-size", queues=[q, unstamped], app=app),
        HueyProc("huey", huey=plain),
        HueyProc("huey-priority", huey=priority, metric="latency"),
        HotQueueProc("hotqueue", queues=["emails", "nothing"], url=url),
        QueuesProc("queues", queues=["plain-list", "nothing"], url=url),
    ]


def read_all(procs: list[RedisProc], now: float) -> list[Reading | Exception]:
    """What one collection reads: every proc on the server in one batch, through the first one's client."""
    for proc in procs:
        proc.validate()
    return read_redis_procs(procs[0].redis_client(), procs, now)


def test_the_script_and_the_pipeline_read_the_same_for_every_backend(private_redis):
    procs = fill_every_backend(private_redis)
    now = time.time() + 60
    private_redis.config_resetstat()

    scripted = read_all(procs, now)
    assert command_counts(private_redis).get("evalsha_ro") == 1  # all of it in one call (loaded first)
    redis_script.pipeline_only(procs[0].redis_client())
    private_redis.config_resetstat()
    pipelined = read_all(procs, now)
    assert "evalsha_ro" not in command_counts(private_redis)

    assert scripted == pipelined
    rq_reading, celery, celery_size, plain, priority, hot, queues = scripted
    assert dict(rq_reading.queues[0].jobs) == {
        "queued": 3,
        "started": 1,
        "due": 1,
        "scheduled": 1,
        "deferred": 0,
        "failed": 0,
        "expired": 1,
    }
    assert 60 <= rq_reading.latency < 70 and rq_reading.queues[1].found is False
    assert [q.jobs["queued"] for q in celery.queues] == [5, 2, 0]
    assert [q.latency is None for q in celery.queues] == [False, True, False]  # stamped, unstamped, empty
    assert 60 <= celery.queues[0].latency < 70
    assert [q.latency is None for q in celery_size.queues] == [False, True]  # a size proc's dashboards see it too
    assert (plain.quantity, priority.quantity, hot.quantity, queues.quantity) == (2, 2, 2, 3)
    assert 60 <= priority.latency < 70


def test_celery_procs_read_the_oldest_stamp_on_the_server_no_body_over_the_wire(private_redis):
    q = unique("heads")
    app = app_for(url_of(private_redis), [[q, "", "direct", q, 0]])
    celery_latency.enable()
    try:
        Blocker(app, private_redis).send(4, queue=q, priority=9)
    finally:
        celery_latency.disable()
    for metric in ("size", "latency"):
        private_redis.config_resetstat()
        (reading,) = read_all([CeleryProc("worker", queues=[q], app=app, metric=metric)], time.time())
        counts = command_counts(private_redis)
        assert reading.quantity == 4
        assert counts["llen"] == 4  # the base list and 3 priority lists
        assert counts["lindex"] == 1  # the one non-empty list's, on the server: the reply is its stamp alone
        assert reading.latency is not None and reading.latency < 60


def two_cycles_as(private_redis, caplog, user: str, rules: tuple[str, ...], procs_for: Callable[[str], list]):
    """Two cycles of the procs ``procs_for(url)`` read as an ACL ``user`` (password ``sekret-pw``) with ``rules``,
    logging at WARNING; the server's command counts are those of the second cycle."""
    private_redis.execute_command("ACL", "SETUSER", user, "on", ">sekret-pw", *rules)
    try:
        collection = Collection(procs_for(url_of(private_redis, f"{user}:sekret-pw@")), max_age=0)
        with caplog.at_level(logging.WARNING, logger="hirefire_exporter"):
            first = collection.collect()
            private_redis.config_resetstat()
            second = collection.collect()
        collection.close()
    finally:
        private_redis.execute_command("ACL", "DELUSER", user)
    return first, second


def test_a_user_denied_scripts_falls_back_once_with_one_log_line(private_redis, caplog):
    private_redis.rpush("default", "a", "b")
    rq.Queue("jobs", connection=private_redis).enqueue("rq_jobs.noop")
    first, second = two_cycles_as(
        private_redis, caplog, "noscripts", ("~*", "&*", "+@all", "-eval", "-evalsha", "-evalsha_ro"),
        lambda url: [QueuesProc("queues", ["default"], url=url), RQProc("rq", ["jobs"], url=url)],
    )  # fmt: skip

    for snapshot in (first, second):
        assert [(s.up, s.reading.quantity) for s in snapshot.procs] == [(True, 2), (True, 1)]
        assert snapshot.procs[1].reading.latency is None  # RQ's walk is a script too: its latency is unknown
    counts = command_counts(private_redis)
    assert counts["llen"] == 3 and "evalsha_ro" not in counts  # the second cycle tried no script
    refusals = [r.getMessage() for r in caplog.records if "refuses server-side scripts" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert "NoPermissionError" in refusals[0]
    assert "sekret-pw" not in caplog.text


def test_a_key_outside_the_users_acl_fails_its_own_proc_and_keeps_the_scripts(private_redis, caplog):
    """Redis checks a script's KEYS against the ACL before it runs: one key the user may not read refuses the call.
    That is no refusal of scripts: the neighbours stay on the script path and only the denied key's proc fails."""
    private_redis.rpush("mine:a", "1", "2")
    private_redis.rpush("theirs:b", "1")
    first, second = two_cycles_as(
        private_redis, caplog, "somekeys", ("~mine:*", "+@read", "+@connection", "+evalsha_ro", "+evalsha",
        "+script|load"),
        lambda url: [QueuesProc("mine", ["mine:a"], url=url), QueuesProc("theirs", ["theirs:b"], url=url)],
    )  # fmt: skip

    for snapshot in (first, second):
        assert [s.up for s in snapshot.procs] == [True, False]
        assert snapshot.procs[0].reading.quantity == 2
        assert "NoPermissionError" in snapshot.procs[1].error
    assert "evalsha_ro" in command_counts(private_redis)  # the second cycle still tried the script
    assert not any("refuses server-side scripts" in r.getMessage() for r in caplog.records)


def test_ten_thousand_queues_are_read_in_several_small_calls_in_one_round_trip(private_redis, monkeypatch):
    names = [f"q{i}" for i in range(10_000)]
    pipe = private_redis.pipeline(transaction=False)
    for i, name in enumerate(names[:3_000]):
        if i % 3:
            pipe.rpush(name, *range(i % 3))
    pipe.execute()
    proc = QueuesProc("worker", queues=names, url=url_of(private_redis))
    rq_proc = RQProc("rq", queues=names, url=url_of(private_redis))
    read_all([proc, rq_proc], time.time())  # the script loaded, the connection made
    private_redis.config_resetstat()
    sends = count_round_trips(monkeypatch)

    (reading, rq_reading) = read_all([proc, rq_proc], time.time())

    assert len(sends) == 1  # the calls go out as they are packed, every reply read after: one round trip

    assert reading.quantity == sum(i % 3 for i in range(3_000))
    assert rq_reading.quantity == 0 and len(rq_reading.queues) == 10_000
    counts = command_counts(private_redis)
    # calls of at most CHUNK_COST cost units each (a plain command costs 1, RQ's read of one queue 8): about 0.3 ms
    # of Redis time per call, never one call of ~100 ms holding every other client of the server. Plain commands:
    # an LLEN per queue of the queues proc
    per_call = redis_script.CHUNK_COST // rq_backend._QUEUE.cost
    assert counts["evalsha_ro"] == math.ceil(10_000 / redis_script.CHUNK_COST) + math.ceil(10_000 / per_call)
    assert counts["llen"] == 10_000 + 10_000  # the RQ proc reads its popped list only where it exists


def test_a_flushed_script_cache_is_reloaded_and_read_through(private_redis):
    private_redis.rpush("default", "a", "b")
    proc = QueuesProc("worker", ["default"], url=url_of(private_redis))
    assert read_all([proc], time.time())[0].quantity == 2
    private_redis.script_flush()  # what a restart or a SCRIPT FLUSH does
    private_redis.rpush("default", "c")
    private_redis.config_resetstat()

    assert read_all([proc], time.time())[0].quantity == 3

    counts = command_counts(private_redis)
    assert counts["script|load"] == 1 and counts["llen"] == 1
    assert not redis_script._server(proc.redis_client()).refused  # still on the script path


class CustomProc(RedisProc):
    """A proc declaring a command the script does not run (HSTRLEN) next to one it does."""

    queues = ["q"]

    def depth_commands(self, now):
        return [("HSTRLEN", "h", "field"), ("LLEN", "q")]

    def build_reading(self, depth, latency, now):
        length, waiting = depth
        return Reading.from_queues([QueueReading("q", {"queued": int(waiting), "bytes": int(length)})])


def test_commands_the_script_does_not_run_are_sent_beside_it(private_redis):
    private_redis.hset("h", "field", "12345")
    private_redis.rpush("q", "job")
    private_redis.config_resetstat()

    (reading,) = read_all([CustomProc("custom", url=url_of(private_redis))], time.time())

    assert dict(reading.queues[0].jobs) == {"queued": 1, "bytes": 5}
    counts = command_counts(private_redis)
    assert (counts["hstrlen"], counts["llen"], counts["evalsha_ro"]) == (1, 1, 1)


def test_every_command_the_script_runs_replies_as_in_a_pipeline(private_redis):
    private_redis.rpush("list", "a", "b", "c")
    private_redis.hset("hash", mapping={"f": "1", "g": "2"})
    private_redis.sadd("set", "x", "y")
    private_redis.zadd("zset", {"m": 1.5, "n": 3})
    private_redis.set("string", "value", ex=600)
    private_redis.xadd("stream", {"k": "v"})
    commands = [
        ("EXISTS", "list"), ("GET", "string"), ("HEXISTS", "hash", "f"), ("HGET", "hash", "g"), ("HGETALL", "hash"),
        ("HKEYS", "hash"), ("HLEN", "hash"), ("HMGET", "hash", "f", "missing"), ("HVALS", "hash"),
        ("LINDEX", "list", -1), ("LINDEX", "missing", -1), ("LLEN", "list"), ("LRANGE", "list", 0, -1),
        ("PTTL", "list"), ("SCARD", "set"),
        ("SISMEMBER", "set", "x"), ("SMEMBERS", "set"), ("SMISMEMBER", "set", "x", "z"), ("STRLEN", "string"),
        ("TTL", "string"), ("TYPE", "zset"), ("XLEN", "stream"), ("ZCARD", "zset"), ("ZCOUNT", "zset", "-inf", 2),
        ("ZRANGE", "zset", 0, -1), ("ZRANGEBYSCORE", "zset", 0, 2), ("ZSCORE", "zset", "m"), ("ZSCORE", "zset", "o"),
        ("LLEN", "hash"),  # the wrong type: an error in its place
    ]  # fmt: skip
    assert {c[0] for c in commands} == redis_script.SCRIPTABLE
    client = QueuesProc("worker", ["list"], url=url_of(private_redis)).redis_client()
    private_redis.config_resetstat()

    (scripted,) = redis_script.execute(client, [commands])
    assert command_counts(private_redis).get("evalsha_ro") == 1
    redis_script.pipeline_only(client)
    (pipelined,) = redis_script.execute(client, [commands])

    *same, error = scripted
    assert same == pipelined[:-1]
    assert type(error) is type(pipelined[-1]) and str(error).startswith("WRONGTYPE")
    assert dict(zip(commands, scripted))["HGETALL", "hash"] == {b"f": b"1", b"g": b"2"}


def test_a_read_function_declared_after_a_first_read_is_loaded_and_run(private_redis):
    """A backend imported late (a proc module loaded after a first cycle) declares its reads then: the next read
    loads the script with them, on both paths."""
    private_redis.set("string", "12345")
    client = QueuesProc("worker", ["q"], url=url_of(private_redis)).redis_client()
    assert redis_script.execute(client, [[("STRLEN", "string")]]) == [[5]]
    doubled = redis_script.read_function(
        "test_doubled_strlen",
        "return redis.call('STRLEN', KEYS[1]) * 2",
        fallback=lambda key: [("STRLEN", key)],
        finish=lambda replies, key: replies[0] * 2,
    )

    assert redis_script.execute(client, [[doubled("string")]]) == [[10]]
    redis_script.pipeline_only(client)
    assert redis_script.execute(client, [[doubled("string")]]) == [[10]]


def test_a_pooled_connection_the_server_closed_is_read_through_on_a_fresh_one(private_redis):
    """A connection the server dropped while idle (a restart, ``timeout``, a proxy): the next read still answers, in
    the same cycle, through the client's retry."""
    private_redis.rpush("default", "a", "b")
    proc = QueuesProc("worker", ["default"], url=url_of(private_redis))
    assert read_all([proc], time.time())[0].quantity == 2
    mine = private_redis.client_id()
    others = [c["id"] for c in private_redis.client_list() if int(c["id"]) != mine]
    for client_id in others:
        private_redis.client_kill_filter(_id=client_id)

    assert read_all([proc], time.time())[0].quantity == 2


def test_a_reply_that_fails_to_parse_leaves_no_unread_reply_for_the_next_read(private_redis):
    """Replies are parsed as they arrive: when parsing one raises, the rest of the exchange is still on the
    connection. It must be dropped, not handed to the next user of the pooled connection, who would read another
    command's replies."""
    private_redis.set("short", "abc")
    private_redis.set("long", "abcdef")

    def refuse(reply, key):
        raise ValueError("a reply this parser cannot take")

    refused = redis_script.read_function("test_refused_strlen", "return redis.call('STRLEN', KEYS[1])", parse=refuse)
    client = QueuesProc("worker", ["q"], url=url_of(private_redis)).redis_client()
    with pytest.raises(ValueError, match="cannot take"):
        redis_script.execute(client, [[refused("short"), ("ECHO", "left unread")]])  # ECHO: sent beside the call

    assert redis_script.execute(client, [[("STRLEN", "long"), ("GET", "long")]]) == [[6, b"abcdef"]]


@pytest.fixture
def slowlog(private_redis):
    """Every top-level command the private server runs, from SLOWLOG (without a script's own calls)."""
    private_redis.config_set("slowlog-log-slower-than", 0)
    private_redis.config_set("slowlog-max-len", 100_000)
    private_redis.slowlog_reset()

    def commands() -> list[list[str]]:
        entries = private_redis.slowlog_get(100_000)
        private_redis.slowlog_reset()
        names = [
            [part.decode("utf-8", "replace") for part in e["command"].split()]
            for e in reversed(entries)
            if e["client_address"] != b"?:0"
        ]  # ?:0: a call made by a script
        return [c for c in names if c[0] not in ("SLOWLOG", "CONFIG", "INFO")]

    try:
        yield commands
    finally:
        private_redis.config_set("slowlog-log-slower-than", 10_000)
        private_redis.config_set("slowlog-max-len", 128)


def test_reads_without_a_bound_on_their_reply_are_sent_beside_the_script(private_redis, slowlog):
    """HVALS of a hash of any size inside a call would hold Redis for as long as the hash takes, counted as one
    command: such reads go as plain commands in the same round trip; a range its indices bound stays inside."""
    private_redis.hset("hash", mapping={f"f{i}": "x" * 100 for i in range(1000)})
    private_redis.zadd("zset", {f"m{i}": i for i in range(1000)})
    private_redis.sadd("set", *range(1000))
    private_redis.rpush("list", *range(1000))
    commands = [
        ("HVALS", "hash"), ("HGETALL", "hash"), ("HKEYS", "hash"), ("SMEMBERS", "set"), ("LRANGE", "list", 0, -1),
        ("ZRANGE", "zset", 0, -1), ("ZRANGEBYSCORE", "zset", 0, "+inf"),
        ("LLEN", "list"), ("ZRANGE", "zset", 0, 0), ("LRANGE", "list", 0, 3),
    ]  # fmt: skip
    client = QueuesProc("worker", ["list"], url=url_of(private_redis)).redis_client()
    redis_script.execute(client, [[("LLEN", "list")]])  # the script loaded
    slowlog()

    (scripted,) = redis_script.execute(client, [commands])

    top = slowlog()
    assert sorted(c[0] for c in top) == sorted(["ROLE", "EVALSHA_RO", *(c[0] for c in commands[:7])])
    (call,) = [c for c in top if c[0] == "EVALSHA_RO"]
    assert call[2] == "3" and call[3:6] == ["list", "zset", "list"]  # LLEN, ZRANGE 0 0, LRANGE 0 3 as its KEYS
    redis_script.pipeline_only(client)
    (pipelined,) = redis_script.execute(client, [commands])
    assert scripted == pipelined
    assert len(scripted[0]) == 1000 and scripted[7] == 1000 and scripted[8] == [b"m0"]


def test_an_rq_head_expired_past_a_few_ids_is_walked_in_a_follow_up_call_of_its_own(private_redis, slowlog):
    """The reader's call walks a few expired ids per queue at most (it holds the reads of ~30 queues); a longer walk
    is one follow-up call per queue, as on the pipeline path, so no call holds Redis for 30 walks of 1,000 ids."""
    names = ["a", "b", "c"]
    queues = [rq.Queue(name, connection=private_redis) for name in names]
    for n, queue in enumerate(queues):
        private_redis.rpush(queue.key, *(f"gone-{i}" for i in range(600 + n)))  # ids whose job hash is gone
        queue.enqueue("rq_jobs.noop")
    proc = RQProc("rq", queues=names, url=url_of(private_redis), metric="latency")
    now = time.time() + 30
    read_all([proc], now)  # the script loaded
    slowlog()

    (reading,) = read_all([proc], now)

    calls = [c for c in slowlog() if c[0] == "EVALSHA_RO"]
    assert len(calls) == 1 + 3  # the queues' reads in one call, then one walk per queue, each a call of its own
    assert [dict(q.jobs)["expired"] for q in reading.queues] == [600, 601, 602]
    assert reading.quantity == 3 and 30 <= reading.latency < 40
    redis_script.pipeline_only(proc.redis_client())
    assert read_all([proc], now) == [reading]
