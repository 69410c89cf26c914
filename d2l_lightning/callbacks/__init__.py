"""Callbacks: export, monitoring, W&B tables. ``train.py`` only wires them together."""

from .export import ExportCallback
from .monitoring import NonFiniteLossError, TrainingMonitor

__all__ = ["ExportCallback", "NonFiniteLossError", "TrainingMonitor"]
