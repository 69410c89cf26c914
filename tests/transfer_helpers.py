"""Shared pieces of the transfer unit tests: a tiny nested model and a recording state dict."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping

import torch
from torch import nn

HEAD = "classifier.1"  # the head of tiny()
TOP = "features, features2, pool, classifier, classifier.0, classifier.1"


def tiny(classes: int = 3, seed: int = 0) -> nn.Sequential:
    """Conv -> BN -> pool -> (Flatten, Linear): a nested head, and 'features' / 'features2'."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        features=nn.Conv2d(1, 2, 3), features2=nn.BatchNorm2d(2), pool=nn.AdaptiveAvgPool2d(1),
        classifier=nn.Sequential(nn.Flatten(), nn.Linear(2, classes))))


def trainable(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


class Recording(Mapping):
    """A state dict that records which tensors were read."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self.state, self.read = state, set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.read.add(key)
        return self.state[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.state)

    def __len__(self) -> int:
        return len(self.state)

    def __contains__(self, key: object) -> bool:
        return key in self.state
