"""Proc classes, one module per backend (imported on demand so that only the installed libraries are needed)."""

from .base import ClientProc, Proc, ProcConfigError, QueueReading, Reading, Workers

__all__ = ["ClientProc", "Proc", "ProcConfigError", "QueueReading", "Reading", "Workers"]
