"""The task LightningModules' hooks called directly, with a stand-in trainer (issue 24), 2 of 2:
the batch each task sees, its initial weights, and the numbers each step logs and adds to the
training sums, for image classification and regression."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from task_helpers import attach, classifier, record_logs, regression
from torch import nn

from d2l_lightning.lit_models import ImageClassificationTask, RegressionTask
from d2l_lightning.lit_models.image_classification import EVAL_CROP
from d2l_lightning.models import preprocess_images, save_export
from d2l_lightning.models.transfer import TransferError

# ------------------------------------------------------------------ image classification


@pytest.mark.parametrize("training, augment, crop", [
    (True, 0.5, "random"), (False, 0.5, "center"), (None, 0.5, "center"), (True, None, None),
    (False, None, None)])
@pytest.mark.parametrize("flip", [True, False])
def test_the_batch_is_preprocessed_as_its_split_sees_it(training, augment, crop, flip) -> None:
    module = classifier(in_channels=2, mean=(0.2, 0.3), std=(0.4, 0.5), resize=8,
                        channels_last=True, augment=augment, flip=flip)
    if training is not None:
        attach(module, training=training)
    x = torch.randint(0, 256, (4, 2, 6, 6), dtype=torch.uint8)
    y = torch.tensor([0, 2, 1, 0])
    torch.manual_seed(3)
    out, labels = module.on_after_batch_transfer((x, y), 0)
    torch.manual_seed(3)
    expected = preprocess_images(x, [0.2, 0.3], [0.4, 0.5], 8, True, 2,
                                 center_crop=EVAL_CROP if crop == "center" else None,
                                 random_crop=augment if crop == "random" else None, flip=flip)
    assert torch.equal(out, expected) and labels is y
    assert out.stride() == (128, 1, 16, 2)  # channels-last


@pytest.fixture
def source(tmp_path) -> tuple[str, nn.Module]:
    """An export of a 3-class softmax regression over 6 x 6 images with named classes."""
    torch.manual_seed(1)
    model = classifier().model
    path = tmp_path / "export"
    save_export(model, {"arch": "softmax_regression", "task": "image_classification",
                        "model_kwargs": {"num_classes": 3, "in_channels": 1, "image_size": 6},
                        "class_names": ["a", "b", "c"]}, path)
    return str(path), model


@pytest.mark.parametrize("names, new_head, why", [
    (["a", "b", "c"], None, "head loaded too (the same 3 classes in the same order)"),
    (["a", "c", "b"], None, "new (head): net.1.weight, net.1.bias (the same classes in another "
                            "order: class 1 is 'b' there, 'c' here)"),
    (["a", "b", "c"], True, "new (head): net.1.weight, net.1.bias (new_head=true)")])
def test_initial_weights_keep_the_head_only_for_the_same_classes(source, names, new_head,
                                                                 why) -> None:
    path, model = source
    module = classifier(init_from=path, class_names=names, new_head=new_head)
    before = module.model.net[1].weight.detach().clone()
    loaded = 2 if why.startswith("head") else 0
    assert module.load_initial_weights() == f"init from {path}: loaded {loaded} tensors; {why}"
    head = model.net[1].weight if loaded else before
    assert torch.equal(module.model.net[1].weight, head)


def test_a_source_that_does_not_fit_is_named_in_the_refusal(tmp_path) -> None:
    mlp = ImageClassificationTask("mlp", num_classes=3, in_channels=1, image_size=6).model
    path = str(tmp_path / "mlp")
    save_export(mlp, {"arch": "mlp", "task": "image_classification", "model_kwargs": {
        "num_classes": 3, "in_channels": 1, "image_size": 6}}, path)
    with pytest.raises(TransferError, match=f"^--init-from {re.escape(path)} holds"):
        classifier(init_from=path).load_initial_weights()


def test_no_initial_weights_is_an_empty_line() -> None:
    assert classifier().load_initial_weights() == regression().load_initial_weights() == ""


def test_training_step_adds_the_loss_count_and_correct_to_the_sums() -> None:
    module = classifier(label_smoothing=0.2)
    attach(module)
    x, y = torch.randn(5, 1, 6, 6), torch.tensor([0, 1, 2, 1, 1])
    with torch.no_grad():
        logits = module(x)
    loss = module.training_step((x, y), 0)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.2).item())
    correct = (logits.argmax(-1) == y).sum().item()  # of 5: never the count of the wrong ones
    assert module._train_sums.tolist() == pytest.approx([5 * loss.item(), 5, correct])


@pytest.mark.parametrize("step, split, bar", [("validation_step", "val", {"prog_bar": True}),
                                             ("test_step", "test", {})])
def test_evaluation_logs_the_plain_loss_and_updates_the_metrics(step, split, bar) -> None:
    module = classifier(label_smoothing=0.2)
    log, log_dict = record_logs(module)
    x, y = torch.randn(5, 1, 6, 6), torch.tensor([0, 1, 2, 1, 1])
    with torch.no_grad():
        logits = module(x)
    out = getattr(module, step)((x, y), 0)
    (name, value), kwargs = log[0]
    assert name == f"{split}/loss" and value.item() == pytest.approx(
        F.cross_entropy(logits, y).item())  # no label smoothing outside training
    assert kwargs == {"on_epoch": True, "sync_dist": True, "batch_size": 5, **bar}
    metrics = getattr(module, f"{split}_metrics")
    assert log_dict == [((metrics,), {"on_epoch": True, **bar})]
    acc = (logits.argmax(-1) == y).float().mean().item()
    assert metrics.compute()[f"{split}/acc"].item() == pytest.approx(acc)
    if split == "test":
        assert torch.equal(out["logits"], logits)
        assert module.test_confmat.compute().sum().item() == 5


def test_the_test_confusion_matrix_is_this_tests_true_by_predicted_counts() -> None:
    module = classifier()
    trainer = attach(module)
    assert module.test_confusion_matrix() is None
    for preds in ([0, 1, 1], [2, 2, 0]):
        logits = F.one_hot(torch.tensor(preds), 3).float()
        module.test_confmat.update(logits, torch.tensor([0, 1, 2]))
        module.on_test_epoch_end()  # the second test counts its own 3 images only
    expected = [[0, 0, 1], [0, 0, 1], [1, 0, 0]]
    assert module.test_confusion_matrix().tolist() == expected
    assert trainer.callback_metrics["test/confusion_matrix"].tolist() == expected


@pytest.mark.parametrize("augment, names, crop, labels", [
    (None, None, None, [0, 1, 2]), (0.5, ["x", "y", "z"], EVAL_CROP, ["x", "y", "z"])])
def test_the_export_config_holds_the_preprocessing_and_labels(augment, names, crop,
                                                               labels) -> None:
    module = classifier(mean=(0.2,), std=(0.4,), resize=8, augment=augment, class_names=names)
    assert module.export_config() == {
        "arch": "softmax_regression", "task": "image_classification",
        "model_kwargs": {"num_classes": 3, "in_channels": 1, "image_size": 8},
        "preprocess": {"mean": [0.2], "std": [0.4], "resize": 8, "image_size": 6,
                       "in_channels": 1, "channels": 1, "center_crop": crop},
        "class_names": labels}


# ------------------------------------------------------------------ regression


def test_regression_loss_is_the_mean_squared_error() -> None:
    y_hat, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [0.0]])
    assert RegressionTask.loss(y_hat, y).item() == 5.0  # (1 + 9) / 2, not halved


def test_regression_training_step_adds_the_loss_and_count_to_the_sums() -> None:
    module = regression()
    attach(module)
    x, y = torch.randn(3, 2), torch.randn(3, 1)
    with torch.no_grad():
        expected = F.mse_loss(module(x), y).item()
    assert module.training_step((x, y), 0).item() == pytest.approx(expected)
    assert module._train_sums.tolist() == pytest.approx([3 * expected, 3])


@pytest.mark.parametrize("step, split", [("validation_step", "val"), ("test_step", "test")])
def test_regression_evaluation_logs_the_split_loss(step, split) -> None:
    module = regression()
    log, _ = record_logs(module)
    x, y = torch.randn(3, 2), torch.randn(3, 1)
    with torch.no_grad():
        expected = F.mse_loss(module(x), y).item()
    assert getattr(module, step)((x, y), 0) is None
    (name, value), kwargs = log[0]
    assert name == f"{split}/loss" and value.item() == pytest.approx(expected)
    assert kwargs == {"on_epoch": True, "prog_bar": True, "sync_dist": True, "batch_size": 3}
