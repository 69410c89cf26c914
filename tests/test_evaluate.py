"""Evaluating a run again (``train.py validate|test``, ``training.validate``/``test``).

A run's last checkpoint, evaluated with the run's own config, gives the numbers of its
``results.json`` to the last digit, for every task family; nothing in the run folder changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from test_host_sync import write_family_data

from d2l_lightning import training
from d2l_lightning.cli import train

SHORT = ["--max-epochs", "1", "--limit-train-batches", "3", "--limit-val-batches", "2",
         "--limit-test-batches", "2", "--no-progress-bar"]
FAMILIES = {
    "image_classification": ["--model", "lenet", "--batch-size", "16"],
    "language_modeling": ["--model", "gru", "--batch-size", "4", "--num-steps", "8",
                          "--sampler", "sequential", "--num-hiddens", "16"],
    "seq2seq": ["--model", "seq2seq_gru", "--data", "fra_eng", "--batch-size", "8",
                "--beam-size", "2"],
    "masked_lm": ["--model", "bert_tiny", "--batch-size", "4", "--max-len", "16"],
    "regression": ["--model", "linear_regression", "--batch-size", "8"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One short run of each family (trained once for the module)."""
    root = write_family_data(tmp_path_factory.mktemp("eval-data"), n_images=120,
                             book_copies=4, fra_pairs=200)
    out = {}
    for family, argv in FAMILIES.items():
        run = tmp_path_factory.mktemp("eval") / family
        data = [] if family == "regression" else ["--data-dir", str(root)]
        assert train.main([*argv, *data, *SHORT, "--run-dir", str(run)]) == 0, family
        out[family] = run
    return out


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_test_and_validate_reproduce_results_json_exactly(family, runs) -> None:
    run = runs[family]
    saved = json.loads((run / "results.json").read_text())
    before = digest(run)
    tested = training.test(run)
    assert tested and all(k.startswith("test/") for k in tested)
    assert tested == {k: saved[k] for k in tested}  # float equality: the same digits
    validated = training.validate(run)
    assert validated and validated == {k: saved[k] for k in validated}
    assert digest(run) == before  # the run folder is untouched


def test_the_command_prints_each_metric_beside_results_json(runs, capsys, tmp_path) -> None:
    run = runs["image_classification"]
    out = tmp_path / "metrics.json"
    assert train.main(["test", "--run-dir", str(run), "--no-progress-bar", "--json",
                       str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test/")]
    assert len(lines) == 3 and all(line.endswith("(= results.json)") for line in lines)
    assert json.loads(out.read_text())["test/acc"] == json.loads(
        (run / "results.json").read_text())["test/acc"]


def test_the_default_checkpoint_is_last_and_another_is_evaluated_with_the_run_config(
        runs, tmp_path) -> None:
    # a copy of the run whose best checkpoint holds other weights (a short run's best is its last)
    run = shutil.copytree(runs["image_classification"], tmp_path / "run")
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    state = torch.load(best, weights_only=True)
    state["state_dict"] = {k: torch.zeros_like(v) for k, v in state["state_dict"].items()}
    torch.save(state, best)
    saved = json.loads((run / "results.json").read_text())
    assert training.test(run)["test/loss"] == saved["test/loss"]
    other = training.test(ckpt=best)
    assert other.keys() == {"test/acc", "test/f1", "test/loss"}
    assert other["test/loss"] == pytest.approx(math.log(10), rel=1e-4)  # zero weights: uniform


@pytest.mark.parametrize("args, needle", [
    (["--run-dir", "NOT_A_RUN"], "is not a run folder of train.py"),
    (["--ckpt", "NOT_A_RUN/checkpoints/last.ckpt"], "does not exist"),
    ([], "name the run (--run-dir RUN) or a checkpoint"),
    (["--run-dir", "RUN", "--ckpt", "OTHER"], "was written by a 'gru' run"),
])
def test_evaluating_what_is_not_a_run_is_one_sentence(args, needle, runs, tmp_path, capsys,
                                                      monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "NOT_A_RUN").mkdir()
    other = runs["language_modeling"] / "checkpoints" / "last.ckpt"
    args = [str(runs["image_classification"]) if a == "RUN" else str(other) if a == "OTHER"
            else a for a in args]
    before = digest(runs["image_classification"])
    assert train.main(["test", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["NOT_A_RUN"]
    assert digest(runs["image_classification"]) == before


def test_an_override_that_changes_the_evaluation_is_refused(runs) -> None:
    from d2l_lightning.training.errors import ConfigError

    with pytest.raises(ConfigError, match="data.batch_size cannot change when evaluating"):
        training.validate(runs["regression"], overrides={"data": {"batch_size": 3}})
