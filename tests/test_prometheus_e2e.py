"""The dashboard, the alert rules and the KEDA examples against a real Prometheus scraping real exporters.

One stack per module, all on loopback:

- RQ jobs in the test Redis database; a real ``rq worker`` holds one of them, so one job is "started";
- the standalone exporter, ``hirefire-exporter serve --config ...`` (the real command, in a subprocess), with procs
  ``worker`` and ``flaky``;
- a WSGI web app wrapped in ``HireFireMiddleware(metrics=True, queue_time=...)`` (the embedded exporter and the
  request queue-time middleware) with proc ``worker``, receiving requests stamped with ``X-Request-Start``;
- Prometheus started by the test (never a system service) on a free port with its own storage, scraping both every
  second and evaluating ``dashboards/hirefire-exporter.rules.yml`` every second.

Every panel query, every variable, every alert expression and the KEDA examples then run through Prometheus's HTTP
API or against the exporter. The stack is set up so that exactly these alerts fire: the backlog of proc ``worker``
grows (jobs are enqueued every second) and its queue ``default`` holds a job enqueued an hour ago (both seen by both
exporters); proc ``flaky`` reads Redis through a proxy that is closed after its first reading, so it is down and its
reading grows stale, and no worker serves its queue while its jobs wait; the scrape job has a third target where
nothing listens. The exporters are scraped, so the "absent" alert must stay quiet.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode, urlsplit
from urllib.request import Request, urlopen

import gjson
import pytest
from conftest import REDIS_DB, free_port, port_open
from support import start_rq_worker, stop, wait_until
from test_dashboards import (
    JOB,
    alert_rules,
    exported_metric_names,
    keda_documents,
    keda_token,
    label_values_query,
    load_dashboard,
    panel_targets,
    query_variables,
    require_binary,
    rules_builder,
    used_metric_names,
)
from werkzeug.serving import WSGIRequestHandler, make_server

from hirefire_exporter.contrib.wsgi import HireFireMiddleware
from hirefire_exporter.procs.rq import RQProc
from hirefire_exporter.queue_time import QueueTimer

rq = pytest.importorskip("rq")

RULES = Path(__file__).resolve().parent.parent / "dashboards" / "hirefire-exporter.rules.yml"
ROUNDS, BATCH = 8, 25  # the backlog of "default" grows by BATCH jobs a second for ROUNDS seconds
SEEDED = {"high": 2, "default": 4, "flaky": 2}  # queued jobs before the growth; one of "default" is an hour old
WORKER_QUEUES = ["high", "default", "slow"]
#: Queue times of the web requests, cycled: p50 falls in the (0.05, 0.1] bucket, p95 and p99 in (1, 2.5].
QUEUE_TIMES = (0.004, 0.02, 0.08, 0.3, 1.2)
#: What Grafana puts in place of its variables when "All" is selected (and $__rate_interval at a 1 s scrape).
GRAFANA_VALUES = {"__rate_interval": "5s", "job": JOB, "instance": ".*", "proc": ".*", "queue": ".*"}
#: HireFireReadingStale's threshold: the test waits that long after cutting "flaky" off its broker.
STALE_SECONDS = 30
#: Polls of Prometheus and of starting servers: (condition, timeout, what) -> the condition's truthy result.
wait_for = partial(wait_until, interval=0.25)


class TcpProxy:
    """Forwards a loopback port to Redis until :meth:`close`; then the port refuses connections, like a dead
    broker's would."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class _QuietHandler(WSGIRequestHandler):
    def log(self, *args: Any) -> None:
        pass


def _web(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The user's web app."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def http(address: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET ``path`` on ``host:port``: (status, JSON body or text)."""
    request = Request(f"http://{address}{path}", headers=headers or {})
    try:
        with urlopen(request, timeout=10) as response:
            body = response.read().decode()
            status = response.status
    except HTTPError as exc:
        return exc.code, exc.read().decode()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


@dataclass
class Stack:
    prometheus: str  # host:port of Prometheus's HTTP API
    exporter: str  # host:port of the standalone exporter, as Prometheus's instance label
    web: str  # host:port of the web app with the embedded exporter and the queue-time middleware
    dead: str  # host:port of the third target, where nothing listens
    token: str
    started: float  # unix time Prometheus started
    proxy_closed: float  # unix time proc "flaky" lost its broker
    expected_worker_jobs: int
    requests: list[float]  # unix times the web app answered a request

    def request_rate(self, seconds: float) -> float:
        """Requests per second the web app answered over the last ``seconds``."""
        since = time.time() - seconds
        return sum(1 for sent in self.requests if sent >= since) / seconds

    def api(self, path: str, **params: Any) -> Any:
        return api(self.prometheus, path, **params)

    def instant(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """``{sorted labels: value}`` of an instant query."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in data["result"]}

    def range(self, expr: str) -> list[dict[str, Any]]:
        """A range query over the stack's lifetime at a 1 s step, as a Grafana time series panel sends it."""
        data = self.api("query_range", query=expr, start=self.started, end=time.time(), step="1s")
        assert data["resultType"] == "matrix", data
        return data["result"]


def api(prometheus: str, path: str, **params: Any) -> Any:
    """The ``data`` of a Prometheus HTTP API answer (``host:port``, ``query``, parameters)."""
    url = f"http://{prometheus}/api/v1/{path}" + (f"?{urlencode(params, doseq=True)}" if params else "")
    try:
        with urlopen(url, timeout=10) as response:
            body = json.load(response)
    except HTTPError as exc:
        raise AssertionError(f"{url}: {exc.code} {exc.read().decode()}") from None
    assert body["status"] == "success", body
    return body["data"]


def grafana(expr: str) -> str:
    """A dashboard query with its variables replaced as Grafana replaces them."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: GRAFANA_VALUES[m.group(1)], expr)


def by(values: dict[tuple[tuple[str, str], ...], float], *labels: str) -> dict[Any, float]:
    """Re-key an instant result by the given labels."""
    out = {}
    for key, value in values.items():
        names = dict(key)
        out[names[labels[0]] if len(labels) == 1 else tuple(names[label] for label in labels)] = value
    return out


def _seed(client: Any) -> None:
    def enqueue(queue: str, count: int) -> list[Any]:
        q = rq.Queue(queue, connection=client)
        return [q.enqueue("rq_jobs.noop") for _ in range(count)]

    old = enqueue("default", 1)[0]  # the head of "default", enqueued (as RQ records it) an hour ago
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    client.hset(f"rq:job:{old.id}", "enqueued_at", hour_ago.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    enqueue("default", SEEDED["default"] - 1)
    enqueue("high", SEEDED["high"])
    enqueue("flaky", SEEDED["flaky"])


def _start(args: list[str], log: Path, address: str, what: str) -> subprocess.Popen:
    """Start a server process logging to ``log`` and wait until it listens on ``address``."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    host, port = address.rsplit(":", 1)

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}: {log.read_text()}")
        return port_open(host, int(port))

    wait_for(listening, 30, what)
    return process


@pytest.fixture(scope="module")
def stack(redis_server: tuple[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import redis

    prometheus_binary = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    host, port = redis_server
    url = f"redis://{host}:{port}/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    _seed(client)
    release_key = "e2e:release"
    rq.Queue("slow", connection=client).enqueue("rq_jobs.block_until", url, release_key, 120)
    processes = [start_rq_worker(url, "slow")]  # a real worker runs that job: one "started" job in queue "slow"
    proxy = TcpProxy((host, port))
    token = keda_token()
    stopping = threading.Event()
    traffic_thread: threading.Thread | None = None
    requests: list[float] = []
    server = web_exporter = None
    try:
        wait_for(lambda: client.zcard("rq:wip:slow") == 1, 30, "the rq worker to start the blocking job")

        config = tmp / "hirefire.toml"
        config.write_text(
            f"""token = "{token}"
max_age = 0.5
stale_after = 300
timeout = 1

[[procs]]
name = "worker"
backend = "rq"
url = "{url}"
queues = {json.dumps(WORKER_QUEUES)}

[[procs]]
name = "flaky"
backend = "rq"
url = "redis://127.0.0.1:{proxy.port}/{REDIS_DB}"
queues = ["flaky"]
"""
        )
        exporter = f"127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "hirefire_exporter.cli", "serve", "--config", str(config)]
        command += ["--host", "127.0.0.1", "--port", exporter.rsplit(":", 1)[1]]
        processes.append(_start(command, tmp / "exporter.log", exporter, "hirefire-exporter serve"))
        status, first = http(exporter, f"/hirefire/{token}/info")  # one cycle while "flaky" can read its broker
        assert status == 200 and [p["name"] for p in first] == ["worker", "flaky"], first
        proxy.close()  # from now on proc "flaky" cannot read its broker
        proxy_closed = time.time()

        middleware = HireFireMiddleware(
            _web,
            [RQProc("worker", queues=WORKER_QUEUES, url=url)],
            token,
            metrics=True,
            queue_time=QueueTimer(),
            max_age=0.5,
            stale_after=300,
            timeout=1,
        )
        web_exporter = middleware.exporter
        server = make_server("127.0.0.1", 0, middleware, threaded=True, request_handler=_QuietHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        web = f"127.0.0.1:{server.server_port}"

        dead = f"127.0.0.1:{free_port()}"
        prometheus = f"127.0.0.1:{free_port()}"
        (tmp / "prometheus.yml").write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [exporter, web, dead]}]}],
                }
            )
        )
        started = time.time()
        command = [
            prometheus_binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address={prometheus}",
            "--log.level=warn",
        ]
        processes.append(_start(command, tmp / "prometheus.log", prometheus, "prometheus"))
        wait_for(lambda: http(prometheus, "/-/ready")[0] == 200, 30, "prometheus to be ready")

        def traffic() -> None:  # web requests keep arriving, stamped by the "router" QUEUE_TIMES[i] ago
            i = 0
            while not stopping.wait(0.1):
                stamp = round((time.time() - QUEUE_TIMES[i % len(QUEUE_TIMES)]) * 1000)
                if http(web, "/", {"X-Request-Start": f"t={stamp}"}) == (200, "hello"):
                    requests.append(time.time())
                i += 1

        traffic_thread = threading.Thread(target=traffic, daemon=True)
        traffic_thread.start()

        # Prometheus hands new targets to its scrapers about 5 s after start-up: wait for the first scrapes, so
        # that the growth below is seen from the start and rates have a full window by the time the tests run.
        def scraped() -> bool:
            return {r["metric"]["instance"] for r in api(prometheus, "query", query="up")["result"]} == {
                exporter,
                web,
                dead,
            }

        wait_for(scraped, 30, "the first scrapes of every target")
        default = rq.Queue("default", connection=client)
        for _ in range(ROUNDS):  # the backlog grows while Prometheus scrapes every second
            for _ in range(BATCH):
                default.enqueue("rq_jobs.noop")
            time.sleep(1)
        expected = SEEDED["high"] + SEEDED["default"] + ROUNDS * BATCH + 1  # + the started job
        yield Stack(prometheus, exporter, web, dead, token, started, proxy_closed, expected, requests)
    finally:
        stopping.set()
        if traffic_thread is not None:
            traffic_thread.join(15)  # before the web server stops under it
        if server is not None:
            server.shutdown()
        if web_exporter is not None:
            web_exporter.collection.close()
        proxy.close()
        client.set(release_key, 1)
        for process in reversed(processes):
            stop(process)
        client.flushdb()
        client.close()


def _settled(stack: Stack) -> None:
    """Wait until Prometheus has scraped the final job count from both exporters."""

    def done() -> bool:
        jobs = by(stack.instant(f'hirefire_proc_jobs{{job="{JOB}", proc="worker"}}'), "instance")
        return jobs == {stack.exporter: stack.expected_worker_jobs, stack.web: stack.expected_worker_jobs}

    wait_for(done, 15, "Prometheus to scrape the final job count")


def test_prometheus_scrapes_the_exact_queue_figures(stack):
    _settled(stack)
    jobs = by(stack.instant(f'hirefire_queue_jobs{{job="{JOB}"}} > 0'), "instance", "proc", "queue", "state")
    worker = {
        ("worker", "high", "queued"): 2,
        ("worker", "default", "queued"): SEEDED["default"] + ROUNDS * BATCH,
        ("worker", "slow", "started"): 1,
    }
    assert jobs == {
        **{(stack.exporter, *key): value for key, value in worker.items()},
        (stack.exporter, "flaky", "flaky", "queued"): 2,
        **{(stack.web, *key): value for key, value in worker.items()},
    }
    assert by(stack.instant(f'hirefire_proc_up{{job="{JOB}"}}'), "instance", "proc") == {
        (stack.exporter, "worker"): 1,
        (stack.exporter, "flaky"): 0,
        (stack.web, "worker"): 1,
    }
    assert by(stack.instant(f'up{{job="{JOB}"}}'), "instance") == {stack.exporter: 1, stack.web: 1, stack.dead: 0}


def test_every_metric_name_used_is_one_prometheus_scraped_from_the_exporters(stack):
    _settled(stack)
    scraped = set(stack.api("label/__name__/values"))
    used = set().union(*used_metric_names().values())
    assert used <= scraped
    assert used <= exported_metric_names()


def test_every_dashboard_panel_query_returns_data(stack):
    _settled(stack)
    empty = []
    for panel, target in panel_targets(load_dashboard()):
        expr = grafana(target["expr"])
        if target.get("instant"):
            values = list(stack.instant(expr).values())
        else:
            values = [float(v) for series in stack.range(expr) for _, v in series["values"]]
        if not any(not math.isnan(v) for v in values):
            empty.append(f"{panel['title']!r} {target['refId']}: {expr}")
    assert empty == []


def test_dashboard_panels_show_the_exact_figures(stack):
    _settled(stack)
    queries = {
        (panel["title"], target["legendFormat"]): grafana(target["expr"])
        for panel, target in panel_targets(load_dashboard())
    }
    expected = stack.expected_worker_jobs
    assert by(stack.instant(queries["Jobs HireFire sees, now", "{{proc}}"]), "proc") == {"worker": expected, "flaky": 2}
    assert by(stack.instant(queries["Waiting jobs per queue, now", "{{proc}} / {{queue}}"]), "proc", "queue") == {
        ("worker", "high"): 2,
        ("worker", "default"): SEEDED["default"] + ROUNDS * BATCH,
        ("worker", "slow"): 0,
        ("flaky", "flaky"): 2,
    }
    # the rq worker on "slow" runs its job; "flaky" has no worker (its last reading, served stale, says so)
    assert by(stack.instant(queries["Workers online", "{{proc}}"]), "proc") == {"worker": 1, "flaky": 0}
    assert by(stack.instant(queries["Worker utilization", "{{proc}}"]), "proc") == {"worker": 1.0}  # flaky: no slot
    assert by(stack.instant(queries["Busy workers vs jobs", "{{proc}} busy workers"]), "proc") == {
        "worker": 1,
        "flaky": 0,
    }
    assert by(stack.instant(queries["Busy workers vs jobs", "{{proc}} jobs"]), "proc") == {
        "worker": expected,
        "flaky": 2,
    }
    assert by(stack.instant(queries["Proc up", "{{proc}}"]), "proc") == {"worker": 1, "flaky": 0}
    assert by(stack.instant(queries["Exporter scraped", "{{instance}}"]), "instance") == {
        stack.exporter: 1,
        stack.web: 1,
        stack.dead: 0,
    }
    oldest = by(stack.instant(queries["Oldest waiting job per queue", "{{proc}} / {{queue}}"]), "proc", "queue")
    assert 3600 <= oldest["worker", "default"] < 3700
    assert oldest["worker", "high"] < 120 and oldest["worker", "slow"] == 0
    growth = by(stack.instant(queries["Backlog growth", "{{proc}}"]), "proc")
    assert growth["worker"] > 5 and growth["flaky"] == 0
    ages = by(stack.instant(queries["Snapshot age", "{{instance}}"]), "instance")
    assert set(ages) == {stack.exporter, stack.web} and all(0 <= age < 5 for age in ages.values())

    # Request queue time, from the middleware's histogram over the web requests the test sent.
    def last(title: str, legend: str) -> float:
        (series,) = stack.range(queries[title, legend])
        return float(series["values"][-1][1])

    assert 0.05 < last("Request queue time", "p50") <= 0.1
    assert 1.0 < last("Request queue time", "p95") <= 2.5 and 1.0 < last("Request queue time", "p99") <= 2.5
    assert last("Request queue time", "mean") == pytest.approx(sum(QUEUE_TIMES) / len(QUEUE_TIMES), rel=0.2)
    assert last("Requests measured", "requests/s") == pytest.approx(stack.request_rate(5), rel=0.3)


def test_dashboard_variables_list_the_jobs_instances_procs_and_queues(stack):
    _settled(stack)
    found = {}
    for name, variable in query_variables(load_dashboard()).items():
        selector, label = label_values_query(grafana(variable["query"]))
        series = stack.api("series", **{"match[]": selector, "start": stack.started, "end": time.time()})
        found[name] = sorted({s[label] for s in series if label in s})
    assert found == {
        "job": [JOB],
        "instance": sorted([stack.exporter, stack.web]),
        "proc": ["flaky", "worker"],
        "queue": ["default", "flaky", "high", "slow"],
    }


def test_keda_prometheus_query_returns_the_hirefire_count(stack):
    _settled(stack)
    trigger = keda_documents("keda-prometheus.yaml")["ScaledObject"]["spec"]["triggers"][0]
    result = stack.instant(trigger["metadata"]["query"])
    assert list(result.values()) == [stack.expected_worker_jobs]  # a single element, as KEDA requires


def test_keda_busy_guard_queries_return_the_jobs_and_the_busy_workers(stack):
    _settled(stack)
    jobs, busy = keda_documents("keda-busy-guard.yaml")["ScaledObject"]["spec"]["triggers"]
    assert list(stack.instant(jobs["metadata"]["query"]).values()) == [stack.expected_worker_jobs]
    assert list(stack.instant(busy["metadata"]["query"]).values()) == [1]  # the rq worker running the "slow" job


def test_keda_metrics_api_value_location_resolves_against_the_hirefire_endpoint(stack):
    documents = keda_documents("keda-metrics-api.yaml")
    meta = documents["ScaledObject"]["spec"]["triggers"][0]["metadata"]
    token = keda_token()
    path = urlsplit(meta["url"]).path
    status, body = http(stack.exporter, path, {meta["keyParamName"]: token})
    assert status == 200, body
    assert gjson.get(body, meta["valueLocation"]) == stack.expected_worker_jobs
    status, by_path = http(stack.exporter, f"/hirefire/{token}/info")  # the path form reads the same JSON
    assert status == 200 and by_path == body
    assert http(stack.exporter, path, {meta["keyParamName"]: "wrong"})[0] == 404


def test_every_alert_expression_returns_data_or_stays_quiet_while_the_exporters_are_scraped(stack):
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    absent = rules.pop("HireFireExporterAbsent")
    assert stack.instant(absent) == {}  # the exporters are scraped: nothing is absent
    builder = rules_builder()  # what a user whose job label differs gets, building the rules with --selector
    (missing,) = [
        rule["expr"]
        for group in builder.configured(builder.load_groups(), selector='job="no-such-job"')
        for rule in group["rules"]
        if rule["alert"] == "HireFireExporterAbsent"
    ]
    assert by(stack.instant(missing), "job") == {"no-such-job": 1}
    wait_for(lambda: time.time() > stack.proxy_closed + STALE_SECONDS + 2, 60, "the flaky reading to age")
    for name, expr in rules.items():
        wait_for(lambda e=expr: stack.instant(e), 15, f"{name} to return data")


def test_alerts_set_up_to_fire_are_active_in_prometheus(stack):
    def active() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        alerts = stack.api("alerts")["alerts"]
        keep = ("proc", "queue", "instance")
        return {
            (a["labels"]["alertname"], tuple((k, a["labels"][k]) for k in keep if k in a["labels"])) for a in alerts
        }

    expected = {("HireFireExporterDown", (("instance", stack.dead),))}
    for instance in (stack.exporter, stack.web):
        expected.add(("HireFireBacklogGrowing", (("proc", "worker"), ("instance", instance))))
        expected.add(("HireFireOldestJobTooOld", (("proc", "worker"), ("queue", "default"), ("instance", instance))))
    expected.add(("HireFireProcDown", (("proc", "flaky"), ("instance", stack.exporter))))
    expected.add(("HireFireJobsWaitingNoWorker", (("proc", "flaky"), ("instance", stack.exporter))))
    expected.add(("HireFireReadingStale", (("proc", "flaky"), ("instance", stack.exporter))))
    try:
        wait_for(lambda: active() == expected, 60, "the expected alerts to be pending or firing")
    except AssertionError:
        assert active() == expected
    groups = stack.api("rules")["groups"]
    health = {rule["name"]: (rule["health"], rule.get("lastError", "")) for g in groups for rule in g["rules"]}
    assert health == {rule["alert"]: ("ok", "") for rule in alert_rules()}
