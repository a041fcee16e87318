"""A small web app with a Huey worker on SQLite and the exporter embedded in it: runs with no broker at all.

pip install -e '.[huey]'
python examples/huey_sqlite_app.py          # serves on $PORT or 8000, with 5 jobs waiting

curl localhost:8000/hirefire/development/info     # what HireFire reads
curl localhost:8000/metrics                       # what Prometheus scrapes
curl -X POST 'localhost:8000/enqueue?n=10'        # more work
huey_consumer examples.huey_sqlite_app.huey       # a worker that drains the queue (from the repository root)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs

from huey import SqliteHuey

from hirefire_exporter.contrib.wsgi import HireFireMiddleware
from hirefire_exporter.procs.huey import HueyProc

huey = SqliteHuey("demo", filename=os.environ.get("DEMO_HUEY_DB", str(Path(__file__).with_name("demo-huey.sqlite3"))))


@huey.task()
def make_thumbnail(image_id: int) -> int:
    time.sleep(1)
    return image_id


class WorkerProc(HueyProc):
    """The Procfile's ``worker`` entry (``worker: huey_consumer examples.huey_sqlite_app.huey``)."""

    name = "worker"
    huey = huey


def site(environ, start_response):
    """The host app: an index page, and a form that enqueues jobs."""
    if environ.get("PATH_INFO") == "/enqueue" and environ.get("REQUEST_METHOD") == "POST":
        count = int(parse_qs(environ.get("QUERY_STRING", "")).get("n", ["1"])[0])
        for i in range(min(count, 1000)):
            make_thumbnail(i)
        start_response("303 See Other", [("Location", "/")])
        return [b""]
    body = (
        f"<h1>Demo app</h1><p>{huey.pending_count()} jobs waiting.</p>"
        '<form method="post" action="/enqueue?n=5"><button>Enqueue 5 jobs</button></form>'
        '<p><a href="/hirefire/development/info">/hirefire/development/info</a> (without HIREFIRE_TOKEN set) '
        '&middot; <a href="/metrics">/metrics</a></p>'
    ).encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [body]


#: The site with the exporter's routes in front of it (the token comes from HIREFIRE_TOKEN, else ``development``).
application = HireFireMiddleware(site, [WorkerProc], metrics=True)


def main() -> None:
    from waitress import serve

    if huey.pending_count() == 0:
        for i in range(5):
            make_thumbnail(i)
    port = int(os.environ.get("PORT", "8000"))
    print(f"demo app on http://127.0.0.1:{port}/  ({huey.pending_count()} jobs waiting)", file=sys.stderr)
    serve(application, host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()
