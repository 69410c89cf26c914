"""Callbacks: export, monitoring, W&B tables. ``train.py`` only wires them together."""

from .export import ExportCallback, export_checkpoint
from .monitoring import FiniteLossCheck, NonFiniteLossError, ThroughputTimer

__all__ = ["ExportCallback", "FiniteLossCheck", "NonFiniteLossError", "ThroughputTimer",
           "export_checkpoint"]
