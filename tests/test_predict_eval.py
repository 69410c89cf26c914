"""``predict.py eval``: an export of any task family evaluated again, without Lightning.

One short run per family (``tests/test_evaluate.py``'s settings, trained once for the module);
its export, evaluated by ``predict.py eval``, gives every ``test/*`` and ``val/*`` number of the
run's ``results.json`` to the last digit (the test split by ``predict.py`` with Lightning and
torchmetrics unimportable, the validation split by its ``main()`` in this process, which is
faster). The evaluation batches are the DataModules' own; the plain-torch metric twins
(``models/metrics.py``) equal torchmetrics and Lightning's logging on random inputs, and the
batch limits equal Lightning's. Each test was seen failing with the code it guards broken.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from test_evaluate import FAMILIES, SHORT
from test_host_sync import write_family_data

from conftest import ROOT, run_cli
from d2l_lightning.cli import predict, train
from d2l_lightning.evaluation import batch_limit, num_batches
from d2l_lightning.models import metrics as twins

WITHOUT_LIGHTNING = str(ROOT / "tests" / "without_lightning.py")
PREDICT = str(ROOT / "predict.py")
#: each family's short run; beyond test_evaluate's settings: seeds other than the default
#: (they seed the image split and BERT's draws of masks and pairs), a fraction of the language
#: model's validation batches (3.5 of 10 is 3) and all its test batches (the last one
#: shorter), BERT's whole splits one example a batch (weights that differ from batch to
#: batch), and a smaller translation model trained long enough for non-zero BLEU, with beam
#: search's length penalty and a validation BLEU that stops inside the third batch; and an
#: image folder (its own split, test/ apart, centre crop of the evaluation view)
EVAL_FAMILIES = {
    **FAMILIES,
    "image_classification": [*FAMILIES["image_classification"], "--seed", "3"],
    "language_modeling": [*FAMILIES["language_modeling"], "--limit-val-batches", "0.35",
                          "--limit-test-batches", "1.0"],
    "masked_lm": [*FAMILIES["masked_lm"], "--batch-size", "1", "--limit-val-batches", "1.0",
                  "--limit-test-batches", "1.0", "--seed", "2"],
    "seq2seq": [*FAMILIES["seq2seq"], "--num-hiddens", "64", "--model-arg", "embed_size=32",
                "--lr", "0.01", "--max-epochs", "6", "--limit-train-batches", "1.0",
                "--limit-val-batches", "3", "--length-penalty", "0.6",
                "--task.bleu_max_sentences=20"],
    "image_folder": ["--model", "lenet", "--data", "image_folder", "--batch-size", "4",
                     "--val-size", "5"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One short run of each family (trained once for the module)."""
    root = write_family_data(tmp_path_factory.mktemp("eval-data"), n_images=120,
                             book_copies=4, fra_pairs=200)
    from test_transfer import make_folder

    folder = make_folder(tmp_path_factory.mktemp("folder") / "pets")
    make_folder(folder.parent / "more", n=3, seed=1)
    (folder.parent / "more" / "train").rename(folder / "test")
    out = {}
    for family, argv in EVAL_FAMILIES.items():
        run = tmp_path_factory.mktemp("predict-eval") / family
        data = ([] if family == "regression" else
                ["--data-dir", str(folder if family == "image_folder" else root)])
        # the same limits on every evaluation (later flags win over SHORT's)
        assert train.main([*SHORT, *argv, *data, "--run-dir", str(run)]) == 0, family
        out[family] = run
    return out


def evaluate(export: Path, split: str, out: Path, without_lightning: bool, capsys,
             *extra: str) -> tuple[int, str, str]:
    """``predict.py eval`` (exit code, stdout, stderr), in a subprocess without Lightning.

    The subprocess uses as many threads as this process trained with (same kernels).
    """
    args = ["eval", "--export", str(export), "--split", split, "--json", str(out), *extra]
    if without_lightning:
        proc = run_cli(WITHOUT_LIGHTNING, PREDICT, *args,
                       env={"OMP_NUM_THREADS": str(torch.get_num_threads())})
        return proc.returncode, proc.stdout, proc.stderr
    code = predict.main(args)
    got = capsys.readouterr()
    return code, got.out, got.err


@pytest.mark.parametrize("split", ["test", "val"])
@pytest.mark.parametrize("family", sorted(EVAL_FAMILIES))
def test_eval_of_the_final_export_equals_results_json(family, split, runs, tmp_path,
                                                      capsys) -> None:
    run = runs[family]
    saved = {k: v for k, v in json.loads((run / "results.json").read_text()).items()
             if k.startswith(f"{split}/") and isinstance(v, float)}
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    # test: predict.py without Lightning (a subprocess); val: its main() here, which is faster
    code, out, err = evaluate(run / "export", split, tmp_path / "m.json", split == "test",
                              capsys)
    assert code == 0, err[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert saved and metrics == saved  # the same keys, float equality: the same digits
    lines = [line for line in out.splitlines() if line.startswith(f"{split}/")]
    assert len(lines) == len(saved) and all(line.endswith("(= results.json)") for line in lines)
    for line in lines:  # the printed value is the repr of the stored one
        key, value = line.split()[:2]
        assert float(value) == saved[key]
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


@pytest.mark.parametrize("family, precision", [("image_classification", "bf16-mixed"),
                                               ("regression", "64-true")])
def test_the_runs_precision_is_reproduced(family, precision, runs, tmp_path, capsys) -> None:
    """Autocast steps, and float64 weights that a float32 model would round."""
    run = tmp_path / "run"
    data = [] if family == "regression" else [
        "--data-dir", json.loads((runs[family] / "export" / "config.json").read_text())[
            "run_config"]["data"]["data_dir"]]
    assert train.main([*SHORT, *FAMILIES[family], *data, "--precision", precision,
                       "--run-dir", str(run)]) == 0
    saved = json.loads((run / "results.json").read_text())
    for split in ("test", "val"):
        code, _, err = evaluate(run / "export", split, tmp_path / "m.json", False, capsys)
        assert code == 0, err
        metrics = json.loads((tmp_path / "m.json").read_text())
        assert metrics and metrics == {k: saved[k] for k in metrics}


def test_the_runs_exercise_what_the_evaluation_reproduces(runs) -> None:
    """Non-trivial numbers, partial batches, limits and a truncated validation BLEU."""
    res = {f: json.loads((run / "results.json").read_text()) for f, run in runs.items()}
    config = json.loads((runs["language_modeling"] / "export" / "config.json").read_text())
    trainer = config["run_config"]["trainer"]
    assert (batch_limit(trainer, "val"), batch_limit(trainer, "test")) == (0.35, 1.0)
    assert res["language_modeling"]["val_batches_per_epoch"] == 3  # int(0.35 * 10)
    assert res["masked_lm"]["val_batches_per_epoch"] > 2
    assert res["image_classification"]["dataset_sizes"]["test"] % 16  # a partial last batch
    assert 0 < res["image_classification"]["test/acc"] < 1
    assert res["seq2seq"]["val/acc"] > 0 and res["masked_lm"]["val/mlm_loss"] > 0
    assert res["seq2seq"]["test/bleu"] > 0 and res["seq2seq"]["test/bleu_beam"] > 0
    task = json.loads((runs["seq2seq"] / "export" / "config.json").read_text())[
        "run_config"]["task"]
    assert (task["bleu_max_sentences"], task["length_penalty"]) == (20, 0.6)
    folder = json.loads((runs["image_folder"] / "export" / "config.json").read_text())
    assert folder["preprocess"]["center_crop"] and res["image_folder"]["dataset_sizes"] == {
        "train": 19, "val": 5, "test": 6}


@pytest.mark.parametrize("family", sorted(EVAL_FAMILIES))
def test_the_evaluation_batches_are_the_datamodules(family, runs) -> None:
    """``predict.py eval`` reads the DataModule's own validation / test batches, in order."""
    from d2l_lightning.datamodules.registry import build_datamodule
    from d2l_lightning.datamodules.splits import eval_data

    config = json.loads((runs[family] / "export" / "config.json").read_text())
    data, seed = config["run_config"]["data"], config["run_config"]["run"]["seed"]
    dm = build_datamodule(data["name"], config["task"], seed=seed,
                          **{k: v for k, v in data.items() if k != "name"})
    dm.prepare_data()
    dm.setup("fit")
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        ours = list(eval_data(data, config["task"], split, seed).loader)
        theirs = list(loader)
        assert len(ours) == len(theirs) > 0, split
        for a, b in zip(ours, theirs):
            assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b)), split


def test_an_export_without_run_config_is_refused_in_one_sentence(runs, tmp_path, capsys,
                                                                  monkeypatch) -> None:
    export = tmp_path / "old-export"
    shutil.copytree(runs["image_classification"] / "export", export)
    config = json.loads((export / "config.json").read_text())
    del config["run_config"]
    (export / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert predict.main(["eval", "--export", str(export), "--json", "m.json"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no run config" in err
    assert "train.py test --run-dir RUN" in err and "export.py RUN/checkpoints/last.ckpt" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no --json file either


def test_a_folder_that_is_not_an_export_is_refused_in_one_sentence(tmp_path, capsys,
                                                                    monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-an-export").mkdir()
    assert predict.main(["eval", "--export", "not-an-export", "--json", "m.json"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not an export folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-an-export"]


@pytest.mark.parametrize("args, needle", [
    (["--split", "train"], "invalid choice"), (["--batch-size", "0"], "at least 1")])
def test_bad_arguments_exit_2(args, needle, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        predict.main(["eval", "--export", "RUN/export", *args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and needle in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------ the metric twins
def test_logged_mean_is_lightnings_epoch_mean() -> None:
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultCollection

    g = torch.Generator().manual_seed(0)
    results, ours = _ResultCollection(training=False), twins.LoggedMean()
    for n in (16, 16, 16, 7):
        value = torch.rand((), generator=g) * 3
        results.log("test_step", "test/loss", value, on_step=False, on_epoch=True,
                    batch_size=n)
        ours.update(value, n)
    assert float(ours.compute()) == float(results.metrics(False)["callback"]["test/loss"])
    assert float(twins.logged(0.1)) == float(torch.tensor(0.1))  # a python float: float32


def test_weighted_mean_is_torchmetrics_mean_metric() -> None:
    from torchmetrics import MeanMetric

    g = torch.Generator().manual_seed(1)
    theirs, ours = MeanMetric(), twins.WeightedMean()
    for i in range(7):
        value, weight = torch.rand((), generator=g) * 5, int(torch.randint(1, 500, ()))
        if i == 3:
            value = torch.tensor(float("nan"))  # dropped with a warning, as torchmetrics does
        with pytest.warns(UserWarning) if i == 3 else contextlib.nullcontext():
            theirs.update(value, weight)
        ours.update(value, weight)
    theirs.update(torch.tensor(2.5), torch.tensor(3.0))
    ours.update(torch.tensor(2.5), torch.tensor(3.0))
    assert float(ours.compute()) == float(theirs.compute())


@pytest.mark.parametrize("ignore_index", [None, 0])
def test_accuracy_is_torchmetrics_micro_accuracy(ignore_index) -> None:
    from torchmetrics.classification import MulticlassAccuracy

    g = torch.Generator().manual_seed(2)
    theirs = MulticlassAccuracy(7, average="micro", ignore_index=ignore_index)
    ours = twins.Accuracy(ignore_index)
    for n in (33, 33, 5):
        logits, y = torch.randn(n, 7, generator=g), torch.randint(7, (n,), generator=g)
        theirs.update(logits, y)
        ours.update(logits, y)
        theirs.update(logits.argmax(-1), y)  # labels, as the translation task passes them
        ours.update(logits.argmax(-1), y)
    assert float(ours.compute()) == float(theirs.compute())


def test_macro_f1_is_torchmetrics_f1_with_absent_classes() -> None:
    from torchmetrics.classification import MulticlassF1Score

    g = torch.Generator().manual_seed(3)
    theirs, ours = MulticlassF1Score(10, average="macro"), twins.MacroF1(10)
    for n in (16, 16, 4):
        logits = torch.randn(n, 10, generator=g)
        logits[:, 9] = -10  # class 9 never predicted...
        y = torch.randint(8, (n,), generator=g)  # ...nor present: it does not count
        theirs.update(logits, y)
        ours.update(logits, y)
    assert float(ours.compute()) == float(theirs.compute())
    with pytest.warns(UserWarning, match="before the ``update``"):
        nothing = float(MulticlassF1Score(3).compute())
    assert float(twins.MacroF1(3).compute()) == nothing == 0.0


def test_corpus_bleu_is_torchmetrics_sacrebleu_without_tokenization() -> None:
    from torchmetrics.text import SacreBLEUScore

    rng = random.Random(4)
    words = ["il", "est", "calme", "je", "suis", "chez", "moi", "va", "!", ".", "?"]
    theirs, ours = SacreBLEUScore(tokenize="none"), twins.CorpusBLEU()
    for _ in range(3):
        refs = [" ".join(rng.choices(words, k=rng.randint(1, 8))) for _ in range(20)]
        hyps = [" ".join(r.split()[:rng.randint(0, 8)] + rng.choices(words, k=rng.randint(0, 2)))
                for r in refs]
        theirs.update(hyps, [[r] for r in refs])
        ours.update(hyps, [[r] for r in refs])
    assert 0 < float(ours.compute()) == float(theirs.compute())
    short, short_theirs = twins.CorpusBLEU(), SacreBLEUScore(tokenize="none")
    short.update(["a b c d"], [["a b c d e f"]])  # the brevity penalty
    short_theirs.update(["a b c d"], [["a b c d e f"]])
    assert 0 < float(short.compute()) == float(short_theirs.compute()) < 1


@pytest.mark.parametrize("length, limit", [
    (10, None), (10, 1.0), (10, 3), (10, 30), (10, 0.5), (7, 0.5), (5, 0.25), (10, 0), (0, 2)])
def test_batch_limits_are_lightnings(length, limit) -> None:
    from lightning.pytorch.trainer.connectors.data_connector import _parse_num_batches
    from lightning.pytorch.trainer.states import RunningStage

    expected = _parse_num_batches(RunningStage.TESTING, length, 1.0 if limit is None else limit)
    assert num_batches(length, limit) == expected


def test_every_datamodule_has_its_evaluation_split() -> None:
    from d2l_lightning.datamodules.registry import DATAMODULES
    from d2l_lightning.datamodules.splits import BUILDERS

    assert set(BUILDERS) == {(name, task) for name, tasks in DATAMODULES.items()
                             for task in tasks}
