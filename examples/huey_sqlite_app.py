"""A small web app with a Huey worker on SQLite and the exporter embedded in it: runs with no broker at all.

From the repository root:

pip install -e '.[huey]'
python examples/huey_sqlite_app.py          # serves on $PORT or 8000, with 5 jobs waiting

curl localhost:8000/hirefire/development/info     # what HireFire reads
curl localhost:8000/metrics                       # what Prometheus scrapes
curl -X POST 'localhost:8000/enqueue?n=10'        # more work
huey_consumer examples.huey_sqlite_app.huey       # a worker: it makes the thumbnails, and the count falls to 0

The queue and the thumbnails the worker makes live in one SQLite file (``$DEMO_HUEY_DB``, else
``examples/demo-huey.sqlite3``); each job takes ``$DEMO_JOB_SECONDS`` (default 1) seconds.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs

from huey import SqliteHuey

from hirefire_exporter.contrib.wsgi import HireFireMiddleware
from hirefire_exporter.procs.huey import HueyProc

DATABASE = os.environ.get("DEMO_HUEY_DB", str(Path(__file__).with_name("demo-huey.sqlite3")))
huey = SqliteHuey("demo", filename=DATABASE)


@huey.task()
def make_thumbnail(image_id: int) -> int:
    time.sleep(float(os.environ.get("DEMO_JOB_SECONDS", "1")))
    with _database() as db:
        db.execute("INSERT INTO thumbnail (image_id, made_at) VALUES (?, ?)", (image_id, time.time()))
    return image_id


def _database() -> sqlite3.Connection:
    db = sqlite3.connect(DATABASE, timeout=10)
    db.execute("CREATE TABLE IF NOT EXISTS thumbnail (image_id INTEGER NOT NULL, made_at REAL NOT NULL)")
    return db


def thumbnails_made() -> int:
    db = _database()
    try:
        return db.execute("SELECT COUNT(*) FROM thumbnail").fetchone()[0]
    finally:
        db.close()


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
        f"<h1>Demo app</h1><p>{huey.pending_count()} jobs waiting, {thumbnails_made()} thumbnails made.</p>"
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
    # Run as a script, this file is the module `__main__`, and Huey would name its task `__main__.make_thumbnail`:
    # a consumer, which imports the file as `examples.huey_sqlite_app`, does not know that name and discards the job.
    # So the script runs the importable module, whose tasks the consumer knows.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from examples.huey_sqlite_app import main as main_of_the_module

    main_of_the_module()
