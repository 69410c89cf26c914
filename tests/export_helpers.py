"""Shared pieces of the export unit tests: tiny models' options, and exporting, editing and
refusing an export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from d2l_lightning.models import build_model
from d2l_lightning.models import export as ex
from d2l_lightning.models.export import ExportError

SOFTMAX = {"num_classes": 3, "in_channels": 1, "image_size": 4}  # 48 + 3 = 51 weights
WORDS = ["<unk>", "<pad>", "<bos>", "<eos>", "go", "."]
MT = {"src_vocab_size": 6, "tgt_vocab_size": 6, "num_hiddens": 8, "ffn_num_hiddens": 16,
      "num_heads": 2, "num_layers": 1}  # 1,558 weights, a 1000-long position table (8,000)
BERT = {"vocab_size": 6, "max_len": 16, "num_hiddens": 8, "ffn_num_hiddens": 16,
        "num_heads": 2, "num_layers": 1}
S2S = {"src_vocab_size": 6, "tgt_vocab_size": 6, "embed_size": 4, "num_hiddens": 4,
       "num_layers": 1, "dropout": 0.0}  # no position table: lengths up to MAX_TOKENS


def _save(folder: Path, arch: str = "softmax_regression", kwargs: dict | None = None,
          **extra: Any) -> Path:
    """Export an untrained ``arch`` with ``extra`` config fields."""
    kwargs = dict(SOFTMAX if kwargs is None else kwargs)
    torch.manual_seed(0)
    return ex.save_export(build_model(arch, **kwargs),
                          {"arch": arch, "model_kwargs": kwargs, **extra}, folder)


def _edit(folder: Path, **fields: Any) -> Path:
    """Overwrite fields of an export's config.json."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(fields)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _refusal(call, *args) -> str:
    with pytest.raises(ExportError) as e:
        call(*args)
    return str(e.value)
