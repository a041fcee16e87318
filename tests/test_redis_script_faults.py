"""What the reader makes of servers that cannot or should not answer: a replica cut off from its master, a script an
operator kills or that fails while it runs, an ACL that gives ``EVALSHA`` but read-only keys, a renamed command."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import redis
from faultproxy import RedisProcess
from support import command_counts, wait_until
from test_redis_script import two_cycles_as, url_of

from hirefire_exporter.collection import Collection
from hirefire_exporter.procs import redis_script
from hirefire_exporter.procs.queues import QueuesProc
from hirefire_exporter.procs.redis_proc import read_redis_procs
from hirefire_exporter.procs.rq import RQProc


@pytest.fixture(autouse=True)
def _fresh_servers(monkeypatch):
    monkeypatch.setattr(redis_script, "_SERVERS", {})


@pytest.fixture
def replica(killable_redis):
    """A second redis-server of the test's own, for ``killable_redis`` or nobody to be its master."""
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.stop()


def link(server: RedisProcess) -> str:
    return server.client().execute_command("ROLE")[3].decode()


@pytest.mark.parametrize("pipeline", [False, True], ids=["script", "pipeline"])
def test_a_replica_that_never_synced_fails_its_reads_and_is_never_read_as_empty(replica, pipeline, caplog):
    dead = RedisProcess()  # a port nothing listens on: a master that is not running
    replica.client().replicaof("127.0.0.1", dead.port)
    procs = [QueuesProc("queues", ["default"], url=replica.url), RQProc("rq", ["default"], url=replica.url)]
    collection = Collection(procs, max_age=0)
    if pipeline:
        redis_script.pipeline_only(procs[0].redis_client())

    snapshot = collection.collect()

    for status in snapshot.procs:
        assert not status.up and status.reading is None  # no reading at all, not 0 jobs
        assert "MasterDownError" in status.error and f":{dead.port}" in status.error
    collection.close()


@pytest.mark.parametrize("pipeline", [False, True], ids=["script", "pipeline"])
def test_a_replica_whose_master_died_keeps_the_last_good_reading_and_is_down(killable_redis, replica, pipeline):
    killable_redis.client().rpush("default", "a", "b", "c")
    replica.client().replicaof("127.0.0.1", killable_redis.port)
    wait_until(lambda: link(replica) == "connected" and replica.client().llen("default") == 3, what="the sync")
    collection = Collection([QueuesProc("queues", ["default"], url=replica.url)], max_age=0, stale_after=60)
    if pipeline:
        redis_script.pipeline_only(collection.procs[0].redis_client())
    assert collection.collect().procs[0].reading.quantity == 3

    killable_redis.kill()
    wait_until(lambda: link(replica) != "connected", what="the replica to see its master gone")
    replica.client().config_set("replica-read-only", "no")
    replica.client().delete("default")  # what it holds now is no longer the truth: it must not be served as such
    stale = collection.collect().procs[0]

    assert not stale.up and "MasterDownError" in stale.error
    assert stale.reading.quantity == 3  # the last good reading, not the replica's 0
    collection.close()


def test_a_user_without_role_is_read_unchecked_with_one_log_line(private_redis, caplog):
    private_redis.rpush("default", "a", "b")
    first, second = two_cycles_as(
        private_redis, caplog, "norole", ("~*", "+@read", "+@connection", "+evalsha_ro", "+script|load"),
        lambda url: [QueuesProc("queues", ["default"], url=url)],
    )  # fmt: skip

    assert [s.procs[0].reading.quantity for s in (first, second)] == [2, 2]
    assert "role" not in command_counts(private_redis)  # not asked again
    said = [r.getMessage() for r in caplog.records if "ROLE" in r.getMessage()]
    assert len(said) == 1 and "+role" in said[0]


def test_a_master_and_a_connected_replica_ask_role_in_the_same_round_trip(private_redis):
    private_redis.rpush("default", "a", "b")
    proc = QueuesProc("queues", ["default"], url=url_of(private_redis))
    proc.validate()
    private_redis.config_resetstat()
    assert read_redis_procs(proc.redis_client(), [proc], time.time())[0].quantity == 2
    assert command_counts(private_redis) == {"role": 1, "llen": 1, "evalsha_ro": 1, "script|load": 1}


SPIN = redis_script.read_function("test_spin", "for i = 1, tonumber(ARGV[1]) do end return 1")


def test_a_script_an_operator_kills_fails_that_read_only_and_scripts_stay_on(private_redis, caplog):
    """``SCRIPT KILL`` of the exporter's call (a long one: an operator sees a script hold Redis): its commands fail
    this cycle, and the next read is on the script path as before, not refused, not switched to EVALSHA."""
    private_redis.rpush("default", "a", "b")
    client = QueuesProc("queues", ["default"], url=url_of(private_redis)).redis_client()
    assert redis_script.execute(client, [[("LLEN", "default")]]) == [[2]]  # loaded
    private_redis.config_set("busy-reply-threshold", 20)  # others may SCRIPT KILL after 20 ms
    kwargs = private_redis.connection_pool.connection_kwargs

    def kill() -> None:
        with redis.Redis(host=kwargs["host"], port=kwargs["port"]) as other:
            wait_until(lambda: _kill(other), what="the script to run", interval=0.01)

    thread = threading.Thread(target=kill)
    thread.start()
    with caplog.at_level(logging.WARNING, logger="hirefire_exporter"):
        (replies,) = redis_script.execute(client, [[SPIN("default", 3 * 10**8)]])  # seconds, unless killed
    thread.join()

    assert "killed" in str(replies[0]).lower()
    server = redis_script._server(client)
    assert (server.refused, server.command) == (False, "EVALSHA_RO")
    private_redis.config_resetstat()
    assert redis_script.execute(client, [[("LLEN", "default")]]) == [[2]]
    assert command_counts(private_redis)["evalsha_ro"] == 1
    assert "refuses server-side scripts" not in caplog.text


def _kill(client) -> bool:
    try:
        return bool(client.script_kill())
    except redis.exceptions.ResponseError as error:  # NOTBUSY: not running yet
        assert "NOTBUSY" in str(error)
        return False


def test_a_lua_error_fails_that_read_only_and_scripts_stay_on(private_redis, monkeypatch, caplog):
    private_redis.rpush("default", "a", "b")
    client = QueuesProc("queues", ["default"], url=url_of(private_redis)).redis_client()
    broken = "return redis.call('NO-SUCH-COMMAND')"  # a runtime error in the reader itself
    monkeypatch.setattr(redis_script, "_reader", (broken, redis_script.hashlib.sha1(broken.encode()).hexdigest()))
    with caplog.at_level(logging.WARNING, logger="hirefire_exporter"):
        for _ in range(2):
            (replies,) = redis_script.execute(client, [[("LLEN", "default")]])
            assert "unknown redis command" in str(replies[0]).lower()
    server = redis_script._server(client)
    assert (server.refused, server.command) == (False, "EVALSHA_RO")
    assert "refuses server-side scripts" not in caplog.text


def test_read_only_keys_with_evalsha_only_fall_back_once_naming_evalsha_ro(private_redis, caplog):
    """``%R~*`` with ``+evalsha`` and no ``+evalsha_ro``: EVALSHA declares its keys read-write, so every call is
    denied its keys. That is a refusal of the scripts (said once, naming the missing right), not of every key."""
    private_redis.rpush("default", "a", "b")
    private_redis.rpush("other", "a")
    first, second = two_cycles_as(
        private_redis, caplog, "readkeys", ("%R~*", "+@read", "+@connection", "+role", "+evalsha", "+script|load",
        "-evalsha_ro"),
        lambda url: [QueuesProc("queues", ["default"], url=url), QueuesProc("other", ["other"], url=url)],
    )  # fmt: skip

    for snapshot in (first, second):
        assert [(s.up, s.reading.quantity) for s in snapshot.procs] == [(True, 2), (True, 1)]
    counts = command_counts(private_redis)
    assert counts.get("evalsha", 0) == counts.get("evalsha_ro", 0) == 0 and counts["llen"] == 2  # pipelined
    (said,) = [r.getMessage() for r in caplog.records]
    assert "refuses server-side scripts" in said and "+evalsha_ro" in said and "read-write" in said


def test_a_renamed_command_is_refused_without_quoting_its_arguments(private_redis, caplog):
    """``unknown command 'evalsha_ro', with args beginning with: ...``: the arguments are the script's SHA, its keys
    (queue names) and ARGV; none of it belongs in the log."""
    private_redis.rpush("secret-queue-name", "a")
    client = QueuesProc("queues", ["secret-queue-name"], url=url_of(private_redis)).redis_client()
    server = redis_script._server(client)
    server.command = "EVALSHA_RENAMED"  # what a server that renamed EVALSHA_RO and EVALSHA answers
    server.loaded = True
    with caplog.at_level(logging.WARNING, logger="hirefire_exporter"):
        assert redis_script.execute(client, [[("LLEN", "secret-queue-name")]]) == [[1]]
    (refusal,) = [r.getMessage() for r in caplog.records if "refuses server-side scripts" in r.getMessage()]
    assert "unknown command" in refusal and "secret-queue-name" not in refusal and "args" not in refusal
