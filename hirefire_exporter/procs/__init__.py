"""Proc classes, one module per backend (imported on demand so that only the installed libraries are needed)."""

from .base import ClientProc, Proc, QueueReading, Reading

__all__ = ["ClientProc", "Proc", "QueueReading", "Reading"]
