"""Per-request cost of the framework adapters on requests that are NOT HireFire's (what every user request pays).

Run: python bench/adapter_overhead.py   (no broker needed: pass-through never touches one)
"""

from __future__ import annotations

import timeit

from hirefire_exporter.contrib import queue_timer
from hirefire_exporter.contrib.wsgi import HireFireMiddleware
from hirefire_exporter.procs.rq import RQProc


def bare(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def start_response(status, headers, exc_info=None):
    return None


procs = [RQProc("worker", url="redis://127.0.0.1:1/0")]  # never contacted: these requests are not HireFire's
plain = HireFireMiddleware(bare, procs, "t")
timed = HireFireMiddleware(bare, procs, "t", queue_time=queue_timer(log=False, dispatch_url=""))
environ = {"PATH_INFO": "/orders", "REQUEST_METHOD": "GET", "HTTP_X_REQUEST_START": "t=1700000000000"}

N = 200_000
results = {}
for name, app in (("bare app", bare), ("+ HireFireMiddleware", plain), ("+ queue time (histogram)", timed)):
    seconds = min(timeit.repeat(lambda app=app: app(environ, start_response), number=N, repeat=5))
    results[name] = seconds / N * 1e6
base = results["bare app"]
for name, micros in results.items():
    print(f"{name:28s} {micros:6.2f} us/request   x{micros / base:5.2f}   +{micros - base:5.2f} us")
