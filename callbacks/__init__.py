"""Callbacks: export, monitoring, W&B tables. ``train.py`` only wires them together."""

from .export import ExportCallback, export_checkpoint
from .monitoring import NonFiniteLossError, TrainingMonitor

__all__ = ["ExportCallback", "NonFiniteLossError", "TrainingMonitor", "export_checkpoint"]
