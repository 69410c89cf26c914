"""Image classification task family (d2l ch. 4, 7, 8)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from d2l_lightning.models import preprocess_images
from d2l_lightning.models.transfer import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    apply_initial_weights,
    describe_init,
    head_choice,
    load_source,
    recorded_names,
    torchvision_name,
)
from d2l_lightning.models.transfer import freeze as freeze_prefixes

from .base import TaskModule

#: evaluation view of augmented data: the central 87.5% (Resize(256) + CenterCrop(224))
EVAL_CROP = 0.875


class ImageClassificationTask(TaskModule):
    """Cross-entropy on logits, accuracy and macro-F1 per split, a test confusion matrix.

    Batches arrive as uint8 ``(images, labels)``; :meth:`on_after_batch_transfer` scales,
    normalises and resizes them on the model's device, exactly as :func:`predict` does.

    Args:
        arch: registry name of the model.
        num_classes: output classes.
        in_channels: image channels.
        image_size: native side length of the data.
        mean: per-channel mean used for normalisation.
        std: per-channel standard deviation used for normalisation.
        resize: side length the model sees (``None``: native).
        class_names: labels, carried into the export.
        model_kwargs: constructor arguments of the model besides the data's sizes (e.g.
            ``activation``).
        label_smoothing: cross-entropy label smoothing.
        channels_last: feed convolutions channels-last tensors.
        init_from: initial weights (d2l §14.2): an export folder, a ``train.py`` checkpoint or
            ``torchvision:NAME``; loaded by :meth:`load_initial_weights` (``train.py`` calls it
            for new runs only). torchvision weights bring ImageNet mean/std and 3 input
            channels (grey-scale batches are repeated).
        freeze: module-name prefixes whose parameters are frozen (``backbone``: all but the
            head); frozen batch-norm layers stay in eval mode.
        new_head: re-initialise the head (``True``) or keep it (``False``); ``None``: keep it
            only when the source's class names are this data's, in the same order.
        augment: from the data: minimum crop area of the on-device training augmentation
            (random resized crop + flip; evaluation: centre crop), ``None`` for none.
        flip: from the data: the training augmentation flips half the images horizontally.
        **optim: optimisation arguments of :class:`TaskModule`.
    """

    monitor = ("val/acc", "max")
    task = "image_classification"
    data_args = ("num_classes", "in_channels", "image_size", "mean", "std", "class_names",
                 "augment", "flip")
    model_data_args = ("num_classes", "in_channels", "image_size")

    def __init__(
        self,
        arch: str = "lenet",
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        resize: int | None = None,
        class_names: Sequence[str] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        init_from: str | None = None,
        freeze: Sequence[str] | None = None,
        new_head: bool | None = None,
        augment: float | None = None,
        flip: bool = True,
        **optim: Any,
    ) -> None:
        super().__init__(**optim)
        self.save_hyperparameters()
        pretrained_rgb = torchvision_name(init_from) is not None
        self.model_channels = 3 if pretrained_rgb else in_channels
        self.norm = ((list(IMAGENET_MEAN), list(IMAGENET_STD)) if pretrained_rgb
                     else (list(mean), list(std)))
        self._build(arch, {"num_classes": num_classes, "in_channels": self.model_channels,
                           "image_size": resize or image_size}, model_kwargs)
        if freeze:
            freeze_prefixes(self.model, freeze)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._init_train_sums(3)  # loss sum, count, correct
        metrics = MetricCollection({"acc": MulticlassAccuracy(num_classes, average="micro"),
                                    "f1": MulticlassF1Score(num_classes, average="macro")})
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_confmat = MulticlassConfusionMatrix(num_classes)
        self.confusion_matrix: torch.Tensor | None = None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 images -> normalised (and resized) float input, on the device."""
        x, *rest = batch
        hp = self.hparams
        train = self._trainer is not None and self._trainer.training
        crop = None if hp.augment is None else EVAL_CROP
        x = preprocess_images(x, *self.norm, hp.resize, hp.channels_last, self.model_channels,
                              center_crop=None if train else crop,
                              random_crop=hp.augment if train else None, flip=hp.flip)
        return (x, *rest)

    def load_initial_weights(self) -> str:
        """Load ``init_from`` into the model; describe it in one line.

        The head is new unless the source's class names are this data's in the same order
        (:func:`models.transfer.head_choice`; ``new_head`` overrides).

        Raises:
            models.transfer.TransferError: a source that does not fit (one sentence).
        """
        hp = self.hparams
        if hp.init_from is None:
            return ""
        source = load_source(hp.init_from, self.task)
        replace, why = head_choice(source.class_names, recorded_names(hp.class_names),
                                   hp.new_head)
        report = apply_initial_weights(self.model, source.state, hp.init_from, replace)
        return describe_init(report, hp.init_from, why)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        """Cross-entropy on logits (``train/loss`` every ``log_every_n_steps``)."""
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self._accumulate_train(loss, (logits.argmax(-1) == y).sum(), n=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Loss, accuracy and macro-F1 over the whole validation split (synced across ranks)."""
        x, y = batch
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True, prog_bar=True,
                 sync_dist=True, batch_size=len(y))
        self.val_metrics.update(logits, y)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        """As validation, plus the confusion matrix; returns logits for callbacks."""
        x, y = batch
        logits = self(x)
        self.log("test/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True,
                 batch_size=len(y))
        self.test_metrics.update(logits, y)
        self.test_confmat.update(logits, y)
        self.log_dict(self.test_metrics, on_epoch=True)
        return {"logits": logits}

    def on_test_epoch_end(self) -> None:
        """Keep the (rank-synced) confusion matrix: rows are true classes."""
        self.confusion_matrix = self.test_confmat.compute().cpu()
        self.test_confmat.reset()
        # under ddp_spawn only callback metrics come back to the main process
        self.trainer.callback_metrics["test/confusion_matrix"] = self.confusion_matrix

    def test_confusion_matrix(self) -> torch.Tensor | None:
        """The last test's confusion matrix (rows: true class, columns: predicted)."""
        return self.confusion_matrix

    def export_config(self) -> dict[str, Any]:
        """Adds preprocessing and class names to the base export config."""
        hp = self.hparams
        cfg = super().export_config()
        cfg["preprocess"] = {"mean": self.norm[0], "std": self.norm[1], "resize": hp.resize,
                             "image_size": hp.image_size, "in_channels": hp.in_channels,
                             "channels": self.model_channels,
                             "center_crop": None if hp.augment is None else EVAL_CROP}
        cfg["class_names"] = list(hp.class_names or range(hp.num_classes))
        return cfg
