"""The worker-side tracker: workers record what they hold (received, held for an ETA, running) per queue in Redis,
under a lease they renew, so that the exporter counts it exactly without broadcasts.

- :mod:`.keys`: the key layout and the exporter's read (commands and parsing, no I/O);
- :mod:`.store`: the core every task library shares (a worker process's holdings mirrored by one thread);
- :mod:`.celery`: ``track(app)`` for Celery workers; :mod:`.huey`: ``track(huey)`` for Huey consumers;
  :mod:`.dramatiq`: ``track(broker)`` for Dramatiq workers.

See docs/worker-tracking.md.
"""
