"""Translation table each validation epoch, and cross-attention heatmaps at the end of fit.

Returned by ``TranslationTask.configure_callbacks()``. The table (source, reference,
hypothesis, plus the book's four sentences with their BLEU(k=2)) goes to the console via
``rank_zero_info`` and, with a ``WandbLogger``, to a W&B table. Heatmaps (one panel per layer
and head) are written as PNG files to ``RUN_DIR/attention/`` and logged as W&B images; ``wandb``
and ``matplotlib`` are imported lazily.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from .wandb_logging import wandb_logger


def save_heatmap(weights: torch.Tensor, src_tokens: list[str], tgt_tokens: list[str],
                 path: Path, title: str) -> Path:
    """Plot ``(layers, heads, T, S)`` attention weights, one panel per layer and head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads = weights.shape[:2]
    fig, axes = plt.subplots(layers, heads, squeeze=False,
                             figsize=(2.2 * heads + 1, 2.0 * layers + 0.6))
    for i in range(layers):
        for j in range(heads):
            ax = axes[i][j]
            ax.imshow(weights[i, j].numpy(), cmap="Reds", vmin=0, vmax=1)
            ax.set_xticks(range(len(src_tokens)), src_tokens, rotation=90, fontsize=7)
            ax.set_yticks(range(len(tgt_tokens)), tgt_tokens, fontsize=7)
            ax.set_title(f"layer {i + 1} head {j + 1}" if heads > 1 else f"layer {i + 1}",
                         fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class TranslationTable(Callback):
    """Log sample translations each validation epoch; save attention heatmaps after fit.

    Args:
        num_rows: validation rows shown.
        heatmap_sentences: English sentences to draw heatmaps for.
    """

    def __init__(self, num_rows: int = 8,
                 heatmap_sentences: tuple[str, ...] = ("go .", "i lost .", "he's calm .",
                                                       "i'm home .")) -> None:
        self.num_rows = num_rows
        self.heatmap_sentences = heatmap_sentences

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print (and log to W&B) the epoch's sample translations."""
        if trainer.sanity_checking:
            return
        rows = [("val", *r) for r in pl_module.samples[: self.num_rows]]
        rows += [("book", s, r, h) for s, r, h, _ in pl_module.book_samples]
        lines = [f"translations, epoch {trainer.current_epoch}:"]
        lines += [f"  [{k}] {s} => {h}   (ref: {r})" for k, s, r, h in rows]
        lines += [f"  book BLEU(k=2) {s!r}: {b:.3f}" for s, _, _, b in pl_module.book_samples]
        rank_zero_info("\n".join(lines))
        logger = wandb_logger(trainer)
        if logger is not None:
            logger.log_table("val/translations",
                             columns=["split", "source", "reference", "hypothesis"],
                             data=[list(r) for r in rows], step=trainer.global_step)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Cross-attention heatmaps of the final model (models with attention only)."""
        if trainer.fast_dev_run or not getattr(pl_module.model, "has_attention", False):
            return
        texts, details = pl_module.translate(list(self.heatmap_sentences), return_attention=True)
        out_dir = Path(trainer.default_root_dir) / "attention"
        paths = [save_heatmap(weights, src, tgt, out_dir / f"sentence{i}.png",
                              f"{sentence} => {' '.join(tgt)}")
                 for i, (sentence, (src, tgt, weights)) in enumerate(
                     zip(self.heatmap_sentences, details))]
        rank_zero_info(f"attention heatmaps: {out_dir}")
        logger = wandb_logger(trainer)
        if logger is not None:
            logger.log_image("attention", [str(p) for p in paths],
                             caption=list(self.heatmap_sentences))
