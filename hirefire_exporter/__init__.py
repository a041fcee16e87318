"""Measure background-job queues and publish the figures to Prometheus and to HireFire, from one cached cycle."""

__version__ = "0.1.0"

from .procs.base import ClientProc, Proc, ProcConfigError, QueueReading, Reading

__all__ = ["ClientProc", "Proc", "ProcConfigError", "QueueReading", "Reading", "__version__"]
