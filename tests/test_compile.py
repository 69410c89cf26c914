"""torch.compile for every task family (issue 16): a few compiled training steps each.

``train.py --compile`` compiles the model in place (inductor; on the CPU it needs a C++
compiler); every registered family compiles.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import read_results
from d2l_lightning.cli import train

#: one small model per family (and per kind of sequence model)
FAMILIES = {
    "cnn": ["--model", "lenet"],
    "attention_classifier": ["--model", "vit", "--data", "fashion_mnist",
                             "--model-arg", "num_blks=1"],
    "rnn_lm": ["--model", "lstm", "--num-steps", "8"],
    "gpt": ["--model", "gpt", "--num-steps", "8"],
    "mamba": ["--model", "mamba", "--num-steps", "8"],
    "seq2seq_rnn": ["--model", "seq2seq_gru", "--data", "fra_eng", "--max-examples", "200"],
    "seq2seq_transformer": ["--model", "transformer_mt", "--data", "fra_eng",
                            "--max-examples", "200"],
    "masked_lm": ["--model", "bert_tiny", "--max-len", "16"],
    "regression": ["--model", "linear_regression"],
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from test_host_sync import write_family_data

    return write_family_data(tmp_path_factory.mktemp("compile"), n_images=120, book_copies=6,
                             fra_pairs=400)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_compiled(family, root, tmp_path) -> None:
    argv = FAMILIES[family]
    data = [] if "linear_regression" in argv else ["--data-dir", str(root)]
    run = tmp_path / "run"
    assert train.main([*argv, *data, "--compile", "--batch-size", "8", "--max-steps", "3",
                       "--max-epochs", "1", "--limit-val-batches", "1", "--no-test",
                       "--no-progress-bar", "--run-dir", str(run)]) == 0
    assert read_results(run)["global_step"] == 3
