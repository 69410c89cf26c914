"""Weights & Biases: a logger that never stalls training, and test-prediction tables.

The final metrics, the confusion-matrix chart, the figures and the model artifact are sent by
:func:`callbacks.media.publish_run`.

``wandb`` is imported lazily, only when ``--logger wandb`` is chosen. Without an API key the run
is logged offline (``wandb sync DIR`` uploads it later) and says so once. With a key, the server
is probed first (one TCP connection, 3 s at most): without a network the run goes offline at
once, saying why; if the online start fails anyway, it falls back to offline.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(trainer: L.Trainer):
    """The trainer's ``WandbLogger``, or ``None`` (the one lookup the callbacks share)."""
    from lightning.pytorch.loggers import WandbLogger

    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def make_wandb_logger(save_dir: str | Path, run_id: str | None = None,
                      project: str = "d2l-lightning", name: str | None = None,
                      tags: list[str] | None = None, **kwargs: Any):
    """A ``WandbLogger`` that will log offline when there is no key or no network.

    Nothing is started or written yet (:func:`start_wandb` does it once the run folder is
    there). ``run_id`` continues that W&B run (a resumed run keeps its id); ``kwargs`` go to
    ``wandb.init`` (``entity``, ``group``, ``notes``...).

    Raises:
        ImportError: wandb is not installed (the message says how to install it).
    """
    try:
        import wandb
    except ImportError:
        raise ImportError("the wandb logger needs the wandb package: pip install wandb") from None
    mode = os.environ.get("WANDB_MODE", "")
    offline = mode in ("offline", "dryrun") or (mode != "disabled" and not _has_api_key())
    if offline and mode not in ("offline", "dryrun"):
        rank_zero_info(f"W&B: no API key found, {_where(save_dir)}")
    settings = wandb.Settings(init_timeout=30, silent=True, console="off")
    if not offline and mode != "disabled":  # disabled stays disabled, network or not
        unreachable = _unreachable(settings.base_url)
        if unreachable:
            rank_zero_info(f"W&B: cannot reach {settings.base_url} ({unreachable}), "
                           f"{_where(save_dir)}")
            offline = True
    return _build(save_dir, offline, settings, run_id, project=project, name=name,
                  tags=tags or None, **kwargs)


def _where(save_dir: str | Path) -> str:
    return (f"logging offline under {save_dir}/wandb; upload later with "
            "`wandb sync <run folder>`")


def _build(save_dir: str | Path, offline: bool, settings: Any, run_id: str | None,
           **kwargs: Any):
    from lightning.pytorch.loggers import WandbLogger

    # mode= goes to wandb.init itself: Lightning's offline=True only sets WANDB_MODE, which
    # wandb has read already once it was imported and set up
    extra = {"mode": "offline"} if offline else {}
    logger = WandbLogger(save_dir=str(save_dir), offline=offline, settings=settings, id=run_id,
                         resume="allow" if run_id else None, **extra, **kwargs)
    logger._d2l_args = (save_dir, settings, run_id, kwargs)  # to rebuild it offline
    return logger


def start_wandb(trainer: L.Trainer, run_dir: Path) -> None:
    """Start the trainer's W&B run (offline if an online start fails) and keep its id.

    The id goes to ``RUN_DIR/wandb/run_id`` (rank 0), so a resumed run continues it.
    """
    logger = wandb_logger(trainer)
    if logger is None or trainer.global_rank != 0:
        return
    try:
        logger.experiment  # start the run now, so a network failure surfaces here  # noqa: B018
    except Exception as e:  # wandb raises several types for network / auth failures
        if logger._offline:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        save_dir, settings, run_id, kwargs = logger._d2l_args
        rank_zero_info(f"W&B: could not start an online run ({type(e).__name__}: {first}), "
                       f"{_where(save_dir)}")
        offline = _build(save_dir, True, settings, run_id, **kwargs)
        offline.experiment  # noqa: B018
        trainer.loggers = [offline if lg is logger else lg for lg in trainer.loggers]
        logger = offline
    id_file = run_dir / "wandb" / "run_id"
    if not id_file.is_file():
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(logger.experiment.id + "\n")


def _unreachable(base_url: str, timeout: float = 3.0) -> str:
    """Why the W&B server cannot be reached in ``timeout`` seconds ('' when it can)."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return ""


class WandbPredictionTable(Callback):
    """Log a table of sample test predictions (image, label, prediction, confidence).

    Args:
        num_samples: rows taken from the first test batch.
    """

    def __init__(self, num_samples: int = 32) -> None:
        self.num_samples = num_samples

    @rank_zero_only
    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                          outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        """Log the table from the first batch."""
        logger = wandb_logger(trainer)
        if batch_idx != 0 or logger is None or not isinstance(outputs, dict):
            return
        import wandb

        hp = pl_module.hparams
        x, y = batch[0][: self.num_samples].float(), batch[-1][: self.num_samples]
        mean = torch.as_tensor(hp.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(hp.std, device=x.device).view(1, -1, 1, 1)
        pixels = (x * std + mean).clamp(0, 1).cpu()  # undo normalisation for display
        probs = outputs["logits"][: self.num_samples].float().softmax(-1).cpu()
        names = list(hp.class_names or range(hp.num_classes))
        rows = []
        for img, label, p in zip(pixels, y.tolist(), probs):
            k = int(p.argmax())
            rows.append([wandb.Image(img.permute(1, 2, 0).numpy()), names[label], names[k],
                         float(p[k])])
        logger.log_table("test/predictions", columns=["image", "label", "prediction",
                                                      "confidence"], data=rows)
