"""How a server's command plans are sent: in a read-only server-side script where the server allows it, else as
plain pipelined commands. The procs' commands and the replies they get are the same either way.

Most of a pipelined cycle's time is spent in redis-py, packing each command and parsing each reply, not in Redis.
:func:`reader`, one generic Lua script, runs a whitelisted set of read-only commands (:data:`SCRIPTABLE`) given
compactly in ``ARGV`` (commands of one shape share one header, an argument every command has in common is sent once)
and returns their replies as one flat array: one call per chunk of commands, all chunks in one pipeline, so one round
trip as before. A command's error reply (a key of the wrong type) comes back in its place in the array, failing only
the proc that asked for it.

- ``EVALSHA_RO`` on Redis >= 7 (``EVALSHA`` where it is refused: an unknown command before 7, an ACL that allows only
  ``EVALSHA``); the script is loaded
  (``SCRIPT LOAD``) in the first pipeline to each server and again after ``NOSCRIPT`` (a restart, ``SCRIPT FLUSH``);
- chunks of at most :data:`CHUNK_COST` (about 0.3 ms of Redis time each), so that one call never holds Redis for
  long while other clients wait: a call is atomic. A read whose reply has no size bound (``HVALS``, ``SMEMBERS``, a
  whole range: :data:`UNBOUNDED`) costs what its reply's size costs, which no cost per command tells in advance:
  it is sent as a plain command beside the calls, in the same round trip;
- keys are passed as ``KEYS`` (one per command; extra keys of a multi-key command would be ``ARGV``: Redis Cluster is
  not supported, the reads of one proc span many slots anyway). A :class:`ReadFunction` may read keys it finds
  (RQ's job hashes), which only a single-node Redis allows;
- a server that refuses scripts (an ACL without ``+evalsha_ro``/``+evalsha`` or ``+script|load``, a managed Redis
  that disables them, a renamed command; an ACL that gives ``EVALSHA`` but only read rights on the keys, which
  ``EVALSHA`` declares read-write) is read with plain pipelined commands from then on, said once in the log. A call
  that fails while it runs (an operator's ``SCRIPT KILL``, a Lua error) fails its commands for this cycle only;
- a replica whose link to its master is down (never synced, or lost since) serves whatever it holds, often nothing:
  ``ROLE``, asked in the same round trip, tells it, and the server's reads then fail with a transient
  ``MasterDownError`` (procs keep their last good reading and are reported down, never 0). An ACL that forbids
  ``ROLE`` turns the check off for that server, said once in the log.

A :class:`ReadFunction` is a read that needs logic on the server (find the first live job, the stamp inside a
message): a proc declares it like a command, ``(function, key, *args)``. In the script it is a Lua function; on the
pipeline path it is its plain ``fallback`` command finished in Python, or, with no fallback, its Lua run as a script
of its own (``EVALSHA``, loaded in the same pipeline).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from ..redaction import describe_error

if TYPE_CHECKING:
    from redis import Redis

    from .redis_proc import Command

log = logging.getLogger("hirefire_exporter")

#: Read-only commands the script runs (each with its key first). Any other command goes in the pipeline beside it.
SCRIPTABLE = frozenset(
    {
        "EXISTS", "GET", "HEXISTS", "HGET", "HGETALL", "HKEYS", "HLEN", "HMGET", "HVALS", "LINDEX", "LLEN", "LRANGE",
        "PTTL", "SCARD", "SISMEMBER", "SMEMBERS", "SMISMEMBER", "STRLEN", "TTL", "TYPE", "XLEN", "ZCARD", "ZCOUNT",
        "ZRANGE", "ZRANGEBYSCORE", "ZSCORE",
    }
)  # fmt: skip
#: Commands whose reply has no size bound (a whole hash, set or range): one of them may hold Redis for milliseconds
#: (HVALS of 10,000 delayed messages: ~25 ms), which a script call would add to the rest of its chunk, holding every
#: other client meanwhile, and which a cost of 1 would not account for. They are sent as plain commands beside the
#: calls, in the same round trip, except a range whose indices bound it (``ZRANGE key 0 0``: :func:`_bounded`).
UNBOUNDED = frozenset({"HGETALL", "HKEYS", "HVALS", "LRANGE", "SMEMBERS", "ZRANGE", "ZRANGEBYSCORE"})
#: The longest range (``LRANGE``/``ZRANGE`` with indices from 0 up) the script still runs.
SMALL_RANGE = 16
#: Cost units per script call: a plain command is 1, about 1 µs of Redis time at most (so about 0.3 ms per call on a
#: quiet machine; measured in docs/performance.md). Smaller calls cost next to nothing more: they are all in one round
#: trip, and while Redis runs one the exporter packs the next or parses the last. Where the machine is loaded and
#: Redis is descheduled in the middle of a call, a short call is also less often stretched past a few milliseconds.
CHUNK_COST = 250


def _identity(reply: Any, *_command: Any) -> Any:
    return reply


#: What every read function may use: ``text(n)``, an integer as text (``%d``), each number formatted once per call.
#: ``string.format`` and Lua's own number-to-text conversion cost about 0.3 µs a number, most of a one-line reply's
#: cost on the server; the counts of a chunk's queues are mostly the same few numbers.
PRELUDE = """
local texts = {}
local function text(n)
  local s = texts[n]
  if not s then s = string.format('%d', n); texts[n] = s end
  return s
end
"""


@dataclass(frozen=True, eq=False)
class ReadFunction:
    """A read-only read with logic that runs on the server. ``lua`` is the body of a script over ``KEYS[1]`` and
    ``ARGV`` that returns no ``nil`` (``false`` instead) and neither keeps nor returns those two tables (the reader
    reuses them from call to call); it runs as a function of :func:`reader`'s script and, on the pipeline path
    without a ``fallback``, as a script of its own. ``parse(reply, key, *args)`` turns its reply into the value a proc
    gets; it runs as the reply arrives, while Redis runs the calls after it, so work done there is nearly free.
    ``fallback`` gives the plain commands that read the same on the pipeline path (given the key and arguments) and
    ``finish(replies, key, *args)`` turns their replies, error replies included, into the same value (or an error:
    :func:`first_error`). ``cost``: cost units (:data:`CHUNK_COST`) per call."""

    name: str
    lua: str
    cost: int = 4
    parse: Callable[..., Any] = _identity
    fallback: Callable[..., list[Command]] | None = None
    finish: Callable[..., Any] = _identity
    #: The function as a script of its own (with :data:`PRELUDE`) and its SHA1.
    script: str = field(init=False)
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "script", f"{PRELUDE}\n{self.lua}")
        object.__setattr__(self, "sha", hashlib.sha1(self.script.encode()).hexdigest())

    def __call__(self, key: str, *args: Any) -> Command:
        """The command a proc declares: ``(self, key, *args)``."""
        return (self, key, *args)

    def __repr__(self) -> str:
        return f"ReadFunction({self.name})"


_FUNCTIONS: dict[str, ReadFunction] = {}


def read_function(name: str, lua: str, **options: Any) -> ReadFunction:
    """Declare a :class:`ReadFunction` (at import time; :func:`reader` is built from all of them)."""
    global _reader
    function = ReadFunction(name, lua, **options)
    if name in _FUNCTIONS or not name.isidentifier():
        raise ValueError(f"read function {name!r}: the name must be a new identifier")
    _FUNCTIONS[name] = function
    _reader = None  # declared after a first read (a backend imported late): the next read loads the new script
    return function


#: ARGV, per group of commands of one name and arity: name, number of arguments after the key, number of commands,
#: shape (per argument ``c``: one value for all, sent once; ``v``: one value per command), then the values argument by
#: argument. KEYS: one key per command, in order. Returns one reply per command, in order; an error reply in place of
#: a command that failed.
_READER_BODY = """
local allowed = {%(allowed)s}
local out, n, a, k = {}, 0, 1, 0
local call = redis.pcall
while a <= #ARGV do
  local name, nargs, count, shape = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3]
  a = a + 4
  local fixed, at, varying = {}, {}, false
  for p = 1, nargs do
    if string.byte(shape, p) == 99 then fixed[p] = ARGV[a]; a = a + 1 else at[p] = a; a = a + count; varying = true end
  end
  local fn = F[name]
  if fn then
    local keys, args = {}, {}  -- reused from call to call: a function keeps neither
    for i = 0, count - 1 do
      keys[1] = KEYS[k + i + 1]
      for p = 1, nargs do args[p] = fixed[p] or ARGV[at[p] + i] end
      local ok, reply = pcall(fn, keys, args)
      if not ok then reply = {err = tostring(type(reply) == 'table' and reply.err or reply)} end
      out[n + i + 1] = reply
    end
  elseif not allowed[name] then
    for i = 1, count do out[n + i] = {err = 'ERR not a command the reader runs: ' .. name} end
  elseif nargs == 0 then
    for i = 1, count do out[n + i] = call(name, KEYS[k + i]) end
  elseif not varying then
    for i = 1, count do out[n + i] = call(name, KEYS[k + i], unpack(fixed)) end
  elseif nargs == 1 then
    local first = at[1] - 1
    for i = 1, count do out[n + i] = call(name, KEYS[k + i], ARGV[first + i]) end
  else
    for i = 0, count - 1 do
      local args = {}
      for p = 1, nargs do args[p] = fixed[p] or ARGV[at[p] + i] end
      out[n + i + 1] = call(name, KEYS[k + i + 1], unpack(args))
    end
  end
  n = n + count
  k = k + count
end
return out
"""

_reader: tuple[str, str] | None = None


def reader() -> tuple[str, str]:
    """The reader script's source and SHA1, built once from :data:`SCRIPTABLE` and the declared read functions."""
    global _reader
    if _reader is None:
        functions = "".join(
            f"F[{name!r}] = function(KEYS, ARGV)\n{function.lua}\nend\n" for name, function in _FUNCTIONS.items()
        )
        allowed = ", ".join(f"{name}=true" for name in sorted(SCRIPTABLE))
        source = PRELUDE + "local F = {}\n" + functions + _READER_BODY % {"allowed": allowed}
        _reader = (source, hashlib.sha1(source.encode()).hexdigest())
    return _reader


@dataclass
class _Server:
    """What one server allows, learnt from its replies."""

    command: str = "EVALSHA_RO"
    loaded: bool = False
    refused: bool = False
    #: Whether ``ROLE`` is asked with each read (not after the server refused it).
    role: bool = True


_SERVERS: dict[Any, _Server] = {}
_LOCK = threading.Lock()


def _server(client: Redis) -> _Server:
    from .redis_proc import batch_key

    key = batch_key(client)  # per user and client: what one user's ACL allows, another's may not
    with _LOCK:
        return _SERVERS.setdefault(key, _Server())


def pipeline_only(client: Redis) -> None:
    """Read ``client``'s server with plain pipelined commands from now on, as after a refusal (benchmarks, tests)."""
    _server(client).refused = True


def execute(client: Redis, plans: Sequence[Sequence[Command]]) -> list[list[Any]]:
    """Every plan's replies, in order, reading each distinct command once (all are read-only): a command asked for by
    several procs (Celery's shared ``unacked`` hash, two procs on one queue) is sent once. A connection failure
    raises; a command's error reply is returned in its place."""
    unique = dict.fromkeys(command for plan in plans for command in plan)
    if not unique:
        return [[] for _ in plans]
    server = _server(client)
    scripted: list[Command] = []
    plain: list[Command] = []
    if not server.refused:
        for command in unique:
            (scripted if _scriptable(command) else plain).append(command)
    replies = _scripted(client, server, scripted, plain) if scripted else _pipelined(client, list(unique), server)
    return [[replies[command] for command in plan] for plan in plans]


def _scriptable(command: Command) -> bool:
    """Whether the script runs ``command``: a read function, or a whitelisted command with a key whose reply is
    bounded (:data:`UNBOUNDED`)."""
    name = command[0]
    if type(name) is ReadFunction:
        return True
    if len(command) < 2 or type(name) is not str or name not in SCRIPTABLE:
        return False
    return name not in UNBOUNDED or _bounded(command)


def _bounded(command: Command) -> bool:
    """A range read whose indices bound its reply: ``LRANGE``/``ZRANGE key start stop`` with ``0 <= start <= stop``
    and at most :data:`SMALL_RANGE` elements (a huey priority queue's head: ``ZRANGE key 0 0``)."""
    if command[0] not in ("LRANGE", "ZRANGE") or len(command) != 4:
        return False
    start, stop = command[2], command[3]
    return type(start) is int and type(stop) is int and 0 <= start <= stop < start + SMALL_RANGE


def plain_commands(command: Command) -> list[Command]:
    """What ``command`` sends on the pipeline path: itself, a read function's fallback commands, or its own script
    (``EVALSHA``, to be loaded first)."""
    name = command[0]
    if not isinstance(name, ReadFunction):
        return [command]
    if name.fallback is not None:
        return name.fallback(*command[1:])
    return [("EVALSHA", name.sha, 1, *command[1:])]


def _pipelined(client: Redis, commands: Sequence[Command], server: _Server | None = None) -> dict[Command, Any]:
    """The commands in one plain pipeline; read functions as their fallback (or their own script, loaded first).
    With ``server``, ``ROLE`` goes first (:func:`_link_down`; without, the caller has just asked it)."""
    pipe = client.pipeline(transaction=False)
    role = server is not None and server.role
    if role:
        pipe.execute_command("ROLE")
    loads = {c[0].sha: c[0].script for c in commands if isinstance(c[0], ReadFunction) and c[0].fallback is None}
    for lua in loads.values():
        pipe.execute_command("SCRIPT", "LOAD", lua)
    sent = [plain_commands(command) for command in commands]
    for each in sent:
        for command in each:
            pipe.execute_command(*command)
    every = pipe.execute(raise_on_error=False)
    if role and server is not None and (down := _link_down(client, server, every[0])) is not None:
        return dict.fromkeys(commands, down)
    replies = iter(every[int(role) + len(loads) :])
    return {command: _finished(command, [next(replies) for _ in each]) for command, each in zip(commands, sent)}


def _finished(command: Command, replies: list[Any]) -> Any:
    """A command's reply from the replies to its :func:`plain_commands`: a read function's ``finish`` of them (which
    sees their errors), else the reply, or its error."""
    name = command[0]
    if isinstance(name, ReadFunction) and name.fallback is not None:
        return name.finish(replies, *command[1:])
    reply = replies[0]
    if isinstance(name, ReadFunction) and not isinstance(reply, Exception):
        return name.parse(reply, *command[1:])
    return reply


def first_error(replies: list[Any]) -> Exception | None:
    """The first error among ``replies`` (a ``finish`` whose read fails with any of them returns it)."""
    return next((reply for reply in replies if isinstance(reply, Exception)), None)


def _scripted(
    client: Redis, server: _Server, scripted: list[Command], plain: list[Command], retries: int = 2
) -> dict[Command, Any]:
    """The scriptable commands in chunks of :func:`reader` calls and the others as themselves, in one round trip
    (:func:`_exchange`). Falls back to :func:`_pipelined` (for good, on this server) when the server refuses the
    script."""
    source, sha = reader()
    results: dict[Command, Any] = {}
    failed: dict[int, tuple[list[list[Command]], Exception]] = {}  # by chunk: a retry hands the same chunk again
    loaded: list[Any] = []  # the last reply to SCRIPT LOAD
    roles: list[Any] = []  # the reply to ROLE

    def chunk_reply(groups: list[list[Command]], reply: Any) -> None:
        if isinstance(reply, Exception):
            failed[id(groups)] = (groups, reply)
        else:
            failed.pop(id(groups), None)
            results.update(_replies(client, groups, reply))

    def requests() -> Iterator[tuple[tuple[Any, ...], Callable[[Any], None]]]:
        if server.role:
            yield ("ROLE",), roles.append
        if not server.loaded:
            yield ("SCRIPT", "LOAD", source), loaded.append
        for chunk in _chunks(scripted):  # each packed just before it is sent: Redis runs the first meanwhile
            groups, keys, argv = _packed(chunk)
            yield (server.command, sha, len(keys), *keys, *argv), partial(chunk_reply, groups)
        for command in plain:
            yield command, partial(results.__setitem__, command)

    _exchange(client, requests())
    if roles and (down := _link_down(client, server, roles[-1])) is not None:
        return dict.fromkeys(scripted + plain, down)
    if loaded:
        load = loaded[-1]
        if isinstance(load, Exception) and _transient(load):  # a server starting: try again next cycle
            return {**results, **dict.fromkeys(scripted, load)}
        if isinstance(load, Exception):
            return _refused(client, server, load, scripted + plain)
        server.loaded = True
    denied: list[Command] = []
    for groups, reply in failed.values():
        if _transient(reply) or _failed_run(reply, sha):  # busy, starting, killed: these commands fail this cycle
            results.update((command, reply) for group in groups for command in group)
        elif _key_denied(reply):  # an ACL without one of the chunk's keys: scripts are fine, that key is not
            denied += [command for group in groups for command in group]
        elif retries and type(reply).__name__ == "NoScriptError":  # gone (a restart, SCRIPT FLUSH): reload it
            server.loaded = False
            return _scripted(client, server, scripted, plain, retries - 1)
        elif retries and server.command == "EVALSHA_RO" and _read_only_refused(reply):  # Redis < 7, or an ACL
            server.command = "EVALSHA"
            return _scripted(client, server, scripted, plain, retries - 1)
        else:
            return _refused(client, server, reply, scripted + plain)
    if denied and server.command == "EVALSHA" and len(denied) == len(scripted):
        # EVALSHA declares its keys read-write: a user with read-only key rights (%R~) is denied every chunk
        return _refused(client, server, _first_failure(failed), scripted + plain, _READ_ONLY_KEYS)
    if denied:  # one more round trip, so that only the commands on a denied key fail, each its own proc
        results.update(_pipelined(client, denied))
    return results


_READ_ONLY_KEYS = (
    "EVALSHA declares its keys read-write, and this user may only read them: allow +evalsha_ro for the faster reads"
)


def _first_failure(failed: dict[int, tuple[list[list[Command]], Exception]]) -> Exception:
    """One of the failed chunks' error replies (they are alike: all denied)."""
    return next(iter(failed.values()))[1]


def _read_only_refused(error: Exception) -> bool:
    """``EVALSHA_RO`` itself refused, so that ``EVALSHA`` may do: unknown before Redis 7 (or renamed), or an ACL that
    names it. Anything else is no reason to declare the keys writable."""
    text = str(error).lower()
    return "unknown command" in text or (type(error).__name__ == "NoPermissionError" and "evalsha_ro" in text)


def _failed_run(error: Exception, sha: str) -> bool:
    """A call that failed while it ran, not a refusal to run it: an operator's ``SCRIPT KILL`` or a Lua runtime error
    (Redis names the running script in such errors: ``script: <sha>`` from 7, ``f_<sha>`` before)."""
    text = str(error)
    return f"script: {sha}" in text or f"f_{sha}" in text or "script killed" in text.lower()


def _link_down(client: Redis, server: _Server, role: Any) -> Exception | None:
    """The error that fails a read of a replica whose link to its master is not ``connected`` (its data may be
    stale, or nothing at all before its first sync), from the reply to ``ROLE``; ``None`` for a master, a connected
    replica, or a server that cannot tell (an ACL that forbids ``ROLE``: not asked again)."""
    from redis.exceptions import MasterDownError

    if isinstance(role, Exception):
        if _transient(role):  # a server loading its data: its reads fail with it, this cycle
            return role
        server.role = False
        log.warning(
            "Redis %s cannot be asked ROLE (%s): a replica whose master link is down would not be told from a good"
            " one (allow +role to check it)",
            _where(client),
            _said(role),
        )
        return None
    parts = [part.decode("utf-8", "replace") if isinstance(part, bytes) else part for part in role or ()]
    if len(parts) >= 4 and parts[0] in ("slave", "replica") and parts[3] != "connected":
        return MasterDownError(
            f"MASTERDOWN a replica whose link to its master {parts[1]}:{parts[2]} is {parts[3]!r}, not 'connected':"
            " its data may be stale or missing"
        )
    return None


def _exchange(client: Redis, requests: Iterable[tuple[tuple[Any, ...], Callable[[Any], None]]]) -> None:
    """Send each request as soon as it is packed, then read the replies in order, handing each (or its error reply)
    to its handler as it arrives: one round trip, as a pipeline, but overlapped. A pipeline packs every command
    before it sends the first and parses every reply before returning; here Redis runs the first call while the
    next are packed, and each reply is parsed while Redis runs the calls after it. A connection failure raises,
    after the client's own retry policy (a pooled connection the server closed while idle); the reads are
    read-only, so the whole exchange is simply sent again."""
    from redis.exceptions import ResponseError

    pool = client.connection_pool
    try:
        connection = pool.get_connection()
    except TypeError:  # redis-py before 5.3 requires a command name
        connection = pool.get_connection("EVALSHA")
    made: list[tuple[tuple[Any, ...], Callable[[Any], None]]] = []  # kept for a retry: requests are made once
    making = iter(requests)

    def each() -> Iterator[tuple[tuple[Any, ...], Callable[[Any], None]]]:
        yield from made
        for request in making:
            made.append(request)
            yield request

    def send_and_read() -> None:
        sent: list[tuple[Any, Callable[[Any], None]]] = []
        for args, handle in each():
            connection.send_packed_command(connection.pack_command(*args), check_health=not sent)
            sent.append((args[0], handle))
        for name, handle in sent:
            try:
                reply = client.parse_response(connection, name)
            except ResponseError as error:
                reply = error
            handle(reply)

    try:
        connection.retry.call_with_retry(send_and_read, lambda _error: connection.disconnect())
    except BaseException:  # whatever was left unread must not reach the next user of the connection
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


def _key_denied(error: Exception) -> bool:
    """Redis checks a script's KEYS against the user's ACL before running it: one key the user may not read refuses
    the whole call, while the user may well run scripts."""
    return type(error).__name__ == "NoPermissionError" and "keys" in str(error)


def _refused(
    client: Redis,
    server: _Server,
    error: Exception,
    commands: list[Command],
    hint: str = "allow +evalsha_ro, +evalsha and +script|load for the faster reads",
) -> dict[Command, Any]:
    server.refused = True
    log.warning(
        "Redis %s refuses server-side scripts (%s): reading it with plain pipelined commands from now on (%s)",
        _where(client),
        _said(error),
        hint,
    )
    return _pipelined(client, commands)


def _where(client: Redis) -> str:
    """The server and database, for the log (never the credentials)."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    where = kwargs.get("path") or getattr(pool, "service_name", None) or f"{kwargs.get('host')}:{kwargs.get('port')}"
    return f"{where} db {kwargs.get('db', 0)}"


def _said(error: Exception) -> str:
    """An error reply for the log, without the arguments Redis quotes for an unknown (renamed) command: queue names,
    the script's source."""
    return describe_error(error).split(", with args beginning with", 1)[0]


def _resp2_callbacks(client: Redis) -> Any:
    """The callbacks that parse RESP2 replies, which is what a script's replies are (Lua speaks RESP2 unless told
    otherwise) even on a RESP3 connection (redis-py's default from 8.0): ``HGETALL`` is then a flat list to make a
    dict of, as a RESP2 client does, not the map a pipeline gets on RESP3."""
    global _RESP2
    if _RESP2 is None:
        try:
            from redis._parsers.helpers import _RedisCallbacks, _RedisCallbacksRESP2
        except ImportError:  # an older redis-py: RESP2 only, its callbacks are the client's
            return client.response_callbacks
        _RESP2 = {name.upper(): f for name, f in {**_RedisCallbacks, **_RedisCallbacksRESP2}.items()}
    return _RESP2


_RESP2: dict[str, Any] | None = None


def _transient(error: Exception) -> bool:
    """An error of the moment, not a refusal: a script of someone else's running long (``BUSY``), a server loading its
    data, a replica without its master, no memory left (redis-py's classes strip the error code)."""
    from redis import exceptions

    kinds = (exceptions.BusyLoadingError, exceptions.TryAgainError, exceptions.MasterDownError)
    oom = getattr(exceptions, "OutOfMemoryError", ())
    return isinstance(error, kinds + ((oom,) if oom else ())) or str(error).startswith("BUSY")


def _chunks(commands: list[Command]) -> list[list[Command]]:
    chunks: list[list[Command]] = [[]]
    cost = 0
    for command in commands:
        name = command[0]
        weight = name.cost if isinstance(name, ReadFunction) else 1
        if cost + weight > CHUNK_COST and chunks[-1]:
            chunks.append([])
            cost = 0
        chunks[-1].append(command)
        cost += weight
    return chunks


_SHAPE = object()


def _packed(chunk: list[Command]) -> tuple[list[list[Command]], list[Any], list[Any]]:
    """A chunk as the reader's KEYS and ARGV, and its commands in groups in the order of the replies."""
    alike: dict[Command, list[Command]] = {}  # by name and arguments: all but the key in common, sent once
    groups: dict[Any, list[Command]] = {}  # commands that have nothing in common but their shape share a group
    for command in chunk:
        if type(command[0]) is str:
            alike.setdefault(command[:1] + command[2:], []).append(command)
        else:  # a read function's arguments are its queue's own: grouped by shape at once
            groups.setdefault((_SHAPE, command[0], len(command)), []).append(command)
    for same, commands in alike.items():
        group = same if len(commands) > 1 else (_SHAPE, same[0], len(same) + 1)
        groups.setdefault(group, []).extend(commands)
    keys: list[Any] = []
    argv: list[Any] = []
    for commands in groups.values():
        columns = list(zip(*commands))
        keys += columns[1]
        shape = "".join("c" if column.count(column[0]) == len(column) else "v" for column in columns[2:])
        name = commands[0][0]
        argv += [name.name if isinstance(name, ReadFunction) else name, len(columns) - 2, len(commands), shape or "-"]
        for kind, column in zip(shape, columns[2:]):
            if kind == "c":
                argv.append(column[0])
            else:
                argv += column
    return list(groups.values()), keys, argv


def _replies(client: Redis, groups: list[list[Command]], replies: list[Any]) -> dict[Command, Any]:
    """Each command's reply, parsed by redis-py's response callback for the command as a pipeline would."""
    callbacks = _resp2_callbacks(client)
    results: dict[Command, Any] = {}
    start = 0
    for commands in groups:
        name = commands[0][0]
        end = start + len(commands)
        mine = replies[start:end]
        if isinstance(name, ReadFunction):
            if name.parse is not _identity:
                parse = name.parse
                mine = [r if isinstance(r, Exception) else parse(r, *c[1:]) for r, c in zip(mine, commands)]
        elif callback := callbacks.get(name):
            mine = [reply if isinstance(reply, Exception) else callback(reply) for reply in mine]
        results.update(zip(commands, mine))
        start = end
    return results
