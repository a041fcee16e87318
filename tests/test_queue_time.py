"""Request queue time from X-Request-Start: every router's format, garbage ignored, histogram and log line."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from hirefire_exporter.queue_time import COLLECTOR, HISTOGRAM, QueueTimer, parse_request_start, queue_seconds

NOW = 1_763_780_000.5  # 2025-11-22, some request's arrival at the dyno


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("1763779999750", 0.75),  # Heroku: milliseconds
        ("t=1763779999750", 0.75),
        ("t=1763780000.25", 0.25),  # nginx: seconds with a fraction
        ("1763780000", 0.5),  # whole seconds
        ("t=1763779999000000", 1.5),  # Apache: microseconds
        ("1763779998500000000", 2.0),  # nanoseconds
        (b"1763779999750", 0.75),  # raw ASGI header bytes
        ("  t=1763779999750 ", 0.75),
        ("1763779999750, 1763780000400", 0.75),  # appended by a second proxy: the first hop counts
    ],
)
def test_every_router_format_gives_the_same_queue_time(header, expected):
    assert queue_seconds(header, NOW) == pytest.approx(expected, abs=1e-6)


def test_a_stamp_from_the_future_is_clamped_to_zero():
    assert queue_seconds("1763780003000", NOW) == 0.0  # router clock 2.5 s ahead of the dyno's


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "t=",
        "garbage",
        "t=abc",
        "nan",
        "inf",
        "-1763779999750",
        "5",
        "176378000000",
        "1" * 65,
        "0x10",
        "t=1e400",
    ],
)
def test_garbage_is_ignored(header):
    assert parse_request_start(header) is None
    assert queue_seconds(header, NOW) is None


def _histogram() -> dict[str, float]:
    return {
        sample.name + str(sample.labels.get("le", "")): sample.value
        for family in HISTOGRAM.collect()
        for sample in family.samples
    }


def test_the_timer_records_the_histogram_and_prints_the_hirefire_log_line(capsys):
    before = _histogram()
    timer = QueueTimer(log=True)
    assert timer.observe("1763780000458", NOW) == pytest.approx(0.042, abs=1e-6)
    assert timer.observe("garbage", NOW) is None
    assert timer.observe("t=1763780000.5", NOW) == 0.0
    after = _histogram()
    assert capsys.readouterr().out == "[hirefire:router] queue=42ms\n[hirefire:router] queue=0ms\n"
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    assert delta["hirefire_request_queue_seconds_count"] == 2
    assert delta["hirefire_request_queue_seconds_sum"] == pytest.approx(0.042, abs=1e-6)
    assert delta["hirefire_request_queue_seconds_bucket0.025"] == 1
    assert delta["hirefire_request_queue_seconds_bucket0.05"] == 2


def test_without_log_nothing_is_printed(capsys):
    QueueTimer(log=False).observe("1763780000458", NOW)
    assert capsys.readouterr().out == ""


def test_wsgi_and_asgi_requests_are_read_alike():
    timer = QueueTimer()
    environ_value = timer.observe_environ({"HTTP_X_REQUEST_START": "t=1700000000000"})
    scope_value = timer.observe_scope({"headers": [(b"host", b"x"), (b"X-Request-Start", b"t=1700000000000")]})
    assert environ_value is not None and scope_value is not None and scope_value >= environ_value > 0
    assert timer.observe_environ({}) is None and timer.observe_scope({"headers": []}) is None


def test_the_collector_publishes_the_histogram_under_its_name():
    QueueTimer()
    registry = CollectorRegistry()
    registry.register(COLLECTOR)
    text = generate_latest(registry).decode()
    assert "# TYPE hirefire_request_queue_seconds histogram" in text
    assert 'hirefire_request_queue_seconds_bucket{le="30.0"}' in text
