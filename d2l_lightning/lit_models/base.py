"""Shared LightningModule machinery: model from the registry, optimizers, schedulers, export."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from d2l_lightning.compat import upgrade_state_dict
from d2l_lightning.models import build_model
from d2l_lightning.models.transfer import frozen_norm_layers, param_groups
from d2l_lightning.training.schema import OPTIMIZERS, Optim


def build_optimizer(params: Any, name: str, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.0, fused: bool | None = None) -> torch.optim.Optimizer:
    """``sgd`` (with optional momentum), ``adam`` or ``adamw``.

    ``fused=True`` runs torch's fused kernel (one kernel per step for all parameters, CUDA and,
    since torch 2.4, CPU); ``None`` is torch's default (a for-loop on CPU, ``foreach`` on CUDA).
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               fused=fused)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"unknown optimizer '{name}'; choose from: {', '.join(OPTIMIZERS)}")


#: devices with fused SGD / Adam / AdamW kernels that we use (torch also has MPS, XPU...)
FUSED_DEVICES = ("cpu", "cuda")


def can_fuse(groups: list[dict[str, Any]]) -> bool:
    """Whether every parameter of ``groups`` can take a fused optimizer step.

    Fused kernels need floating-point parameters on one of :data:`FUSED_DEVICES`; on our
    2-vCPU VM they were 1.5-13x faster per step than torch's CPU default (README).
    """
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES
                                for p in params)


class TaskModule(L.LightningModule):
    """Base of the task-family LightningModules.

    Subclasses build ``self.model`` (a pure ``models/`` module) through :meth:`_build` and
    implement the steps. Constructor arguments are primitives, saved as hyper-parameters, so a
    checkpoint alone rebuilds the run. The optimisation arguments (the config's ``optim``
    section) are the fields of :class:`~d2l_lightning.training.schema.Optim`, declared and
    checked there; subclasses pass them on as ``**optim``. Gradient clipping is the Trainer's
    own ``gradient_clip_val``.

    Attributes:
        monitor: ``(metric, mode)`` that selects the best checkpoint.
        task: task-family name as in the registry.
        data_args: constructor arguments that come from ``DataModule.data_info()``.
        model_data_args: model constructor arguments this module fills from the data (so a
            config may not set them).
        optim: the optimisation settings.
    """

    monitor: tuple[str, str] = ("val/loss", "min")
    task: str = ""
    data_args: tuple[str, ...] = ()
    model_data_args: tuple[str, ...] = ()

    def __init__(self, **optim: Any) -> None:
        super().__init__()
        self.optim = Optim(**optim)  # ValueError: one sentence naming the setting

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets this string on every hook call, ~40 times a training step; through
        # nn.Module.__setattr__ that costs ~5% of a small model's step on CPU. It is never a
        # parameter, buffer or module, so a plain attribute is equivalent.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def log(self, name: str, value: Any, *args: Any, batch_size: int | None = None,
            **kwargs: Any) -> None:
        """As Lightning's ``log``, with ``batch_size`` counted as a float.

        Lightning syncs an epoch mean (``sync_dist=True``) as the ranks' mean of
        ``sum(value * batch_size)`` over the ranks' mean of ``sum(batch_size)``, and divides an
        integer count by the world size in place, truncating it: the ``val/loss`` of 21
        images on 2 ranks was their loss sum over 20. A float count (float32, exact below
        2**24) is not truncated, and one process's digits are unchanged.
        """
        super().log(name, value, *args,
                    batch_size=None if batch_size is None else float(batch_size), **kwargs)

    # Training-split bookkeeping. One per-step `self.log` costs ~0.5 ms on CPU
    # (bench/lightning_overhead.py), ~5% of a LeNet step, so training sums stay in one
    # tensor, the step loss goes to the loggers every `log_every_n_steps` (and at step 0), and
    # epoch means are synced across ranks once per epoch.
    def _init_train_sums(self, size: int) -> None:
        # A plain attribute, not a buffer: DDP copies rank 0's buffers into every rank before
        # each forward, which made every rank's sums rank 0's (train/loss_epoch and train/acc
        # then described only rank 0's shard).
        self._train_sums = torch.zeros(size, dtype=torch.float64)
        self._train_sum_views = self._train_sums.unbind()

    def _accumulate_train(self, loss: torch.Tensor, *sums: torch.Tensor,
                          n: int | torch.Tensor) -> None:
        """Add ``[loss * n, n, *sums]`` to the epoch's sums (in place, no host sync)."""
        total, count, *rest = self._train_sum_views
        with torch.no_grad():  # the adds record nothing for autograd (no detach op needed)
            if isinstance(n, torch.Tensor):
                total.add_(loss * n)
            else:
                total.add_(loss, alpha=n)
            count.add_(n)
            for view, value in zip(rest, sums):
                view.add_(value)
        step = self.trainer.global_step
        if (step + 1) % self.trainer.log_every_n_steps == 0 or step == 0:
            value = {"train/loss": float(loss.detach())}
            for logger in self.loggers:  # straight to the loggers (rank 0 only)
                logger.log_metrics(value, step=step)

    def on_train_epoch_start(self) -> None:
        """New training sums on this module's device (float64; float32 where MPS lacks it)."""
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self._train_sums = torch.zeros(len(self._train_sums), dtype=dtype, device=self.device)
        self._train_sum_views = self._train_sums.unbind()  # views: adds to them fill the sums

    def on_train_epoch_end(self) -> None:
        """Epoch means over all ranks: ``train/loss_epoch``, and ``train/acc`` if counted.

        The sums are ``[loss_sum, count]`` or ``[loss_sum, count, correct]`` (count: images,
        or non-pad target tokens).
        """
        loss_sum, count, *rest = self._reduced_train_sums().tolist()
        if count:
            self.log("train/loss_epoch", loss_sum / count, on_epoch=True)
            if rest:
                self.log("train/acc", rest[0] / count, on_epoch=True)

    def _reduced_train_sums(self) -> torch.Tensor:
        """The epoch's training sums over all ranks: ``[loss_sum, count, ...]``."""
        return self.trainer.strategy.reduce(self._train_sums.clone(), reduce_op="sum")

    def _build(self, arch: str, from_data: dict[str, Any],
               model_kwargs: dict[str, Any] | None) -> None:
        """Build ``self.model`` from the data's sizes plus the config's model options."""
        clash = sorted(from_data.keys() & (model_kwargs or {}).keys())
        if clash:
            raise ValueError(f"model option(s) {', '.join(clash)} come from the data and "
                             "cannot be set")
        self.builder_kwargs = {**from_data, **(model_kwargs or {})}
        self.model: nn.Module = build_model(arch, **self.builder_kwargs)

    def forward(self, *args: Any) -> torch.Tensor:
        """The pure model's forward: logits, never a loss."""
        return self.model(*args)

    def configure_optimizers(self) -> Any:
        """Optimizer and LR scheduler from the ``optim`` arguments."""
        hp = self.optim
        groups = param_groups(self.model, hp.lr, hp.lr_mult or {})
        opt = build_optimizer(groups, hp.optimizer, hp.lr, hp.weight_decay, hp.momentum,
                              fused=can_fuse(groups) or None)
        name = hp.scheduler
        if name == "none":
            return opt
        if name == "step":
            epochs = max(self.trainer.max_epochs or 1, 1)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(epochs // 3, 1), gamma=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if name == "plateau":
            metric, mode = self.monitor
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(  # any improvement counts
                opt, mode=mode, factor=hp.plateau_factor, patience=hp.plateau_patience,
                threshold=0.0)
            return {"optimizer": opt,
                    "lr_scheduler": {"scheduler": sched, "monitor": metric, "interval": "epoch"}}
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        if name == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        else:  # onecycle (names are checked in __init__)
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train(self, mode: bool = True) -> TaskModule:
        """As ``nn.Module.train``, but frozen batch-norm layers stay in eval mode (d2l §14.2).

        Their running statistics would otherwise drift to the new data while their affine
        parameters stay fixed.
        """
        super().train(mode)
        if mode and hasattr(self, "model"):
            for module in frozen_norm_layers(self.model):
                module.eval()
        return self

    def on_train_start(self) -> None:
        """Continue a resumed run exactly: loader position, random numbers, the epoch's sums.

        ``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` for the cosine and
        one-cycle schedules, which builds the training loader before a checkpoint is restored;
        Lightning then never passes the loader its saved position (Lightning-AI/
        pytorch-lightning#20550) and a mid-epoch resume would restart the epoch. Our loaders
        read the position when their first batch is drawn, so loading it here is exact; it is
        a no-op when not resuming or when Lightning has already loaded it. The random-number
        state (dropout) is restored here rather than at load time, so loading a checkpoint for
        inference never changes the global generator.
        """
        load = getattr(self.trainer.fit_loop, "_load_combined_loader_states", None)
        if load is not None:
            load()
        rng = self.__dict__.pop("_resume_rng", None)
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        # A mid-epoch resume gets no on_train_epoch_start: the epoch's sums continue from the
        # checkpoint's (one process; under DDP each rank's own sums are not saved).
        saved = self.__dict__.pop("_resume_sums", None)
        if saved is not None and saved["world_size"] == self.trainer.world_size == 1 \
                and len(saved["sums"]) == len(self._train_sums):
            self._train_sums = saved["sums"].to(self.device, self._train_sums.dtype).clone()
            self._train_sum_views = self._train_sums.unbind()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the random-number state, so dropout after a resume draws what it would have."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_states"] = rng
        if self._trainer is not None:  # the epoch's sums so far, for a resume in mid-epoch
            checkpoint["train_sums"] = {"epoch": self.current_epoch, "sums": self._train_sums.cpu(),
                                        "world_size": self.trainer.world_size}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Map weights saved before the shared Transformer blocks; keep the saved RNG state.

        The random-number state is restored in :meth:`on_train_start`.
        """
        checkpoint["state_dict"] = upgrade_state_dict(checkpoint["state_dict"])
        if "rng_states" in checkpoint:
            self._resume_rng = checkpoint["rng_states"]
        if "train_sums" in checkpoint:  # restored in on_train_start
            self._resume_sums = checkpoint["train_sums"]

    def test_confusion_matrix(self) -> torch.Tensor | None:
        """The last test's confusion matrix (classifiers; ``None`` for other tasks)."""
        return None

    def load_initial_weights(self) -> str:
        """Load the task's initial weights, if it has any (see ``ImageClassificationTask``)."""
        return ""

    def extra_exports(self) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
        """Parts exported beside the model, ``{name: (module, config)}`` (e.g. BERT's encoder)."""
        return {}

    def export_config(self) -> dict[str, Any]:
        """What ``config.json`` of an export holds; subclasses add preprocessing and labels."""
        return {"arch": self.hparams.arch, "task": self.task,
                "model_kwargs": dict(self.builder_kwargs)}
