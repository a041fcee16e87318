"""Tornado integration: ``hirefire_exporter.contrib.tornado.handlers.hirefire_handlers(token, procs)``."""
