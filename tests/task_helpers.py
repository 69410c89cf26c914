"""Shared pieces of the task-module unit tests: a call recorder, a stand-in trainer and two
tiny tasks."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import lightning as L
import torch

from d2l_lightning.lit_models import ImageClassificationTask, RegressionTask


class Calls(list):
    """A callable that records ``(args, kwargs)`` of each call."""

    def __init__(self, result: Any = None) -> None:
        super().__init__()
        self.result = result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.append((args, kwargs))
        return self.result


def attach(module: L.LightningModule, **kw: Any) -> SimpleNamespace:
    """Attach a stand-in trainer with the attributes the hooks read."""
    trainer = SimpleNamespace(global_step=1, log_every_n_steps=50, loggers=[], world_size=1,
                              current_epoch=0, training=False, callback_metrics={},
                              fit_loop=SimpleNamespace(),
                              strategy=SimpleNamespace(reduce=lambda t, reduce_op: t))
    vars(trainer).update(kw)
    module._trainer = trainer
    return trainer


def regression() -> RegressionTask:
    torch.manual_seed(0)
    return RegressionTask("linear_regression", num_inputs=2)


def classifier(**kw: Any) -> ImageClassificationTask:
    torch.manual_seed(0)
    args = {"num_classes": 3, "in_channels": 1, "image_size": 6, **kw}
    return ImageClassificationTask("softmax_regression", **args)


def record_logs(module: L.LightningModule) -> tuple[Calls, Calls]:
    module.log, module.log_dict = Calls(), Calls()
    return module.log, module.log_dict
