"""The sectioned config: every flag routed to the constructor that uses it, --config and
--print-config, exact replay, --list, and one-sentence refusals that write nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from pathlib import Path

import pytest
import torch
import yaml
from test_language_modeling import BOOK, write_wikitext
from test_seq2seq import write_fra_txt
from torch import nn

from conftest import ROOT, make_idx_dataset, read_results
from d2l_lightning.callbacks.progress import TerminalProgress
from d2l_lightning.cli import train
from d2l_lightning.models import Recipe, get_spec, model_names
from d2l_lightning.training.command_line import config_from_argv
from d2l_lightning.training.config import (
    CONFIGS,
    RECIPE_SECTIONS,
    SECTIONS,
    Layer,
    dump_config,
    load_config_file,
    resolve,
)
from d2l_lightning.training.flags import build_parser, flag_actions
from d2l_lightning.training.run import build_data, build_module, build_trainer

COMMANDS = {"-h", "--config", "--print-config", "--list", "--list-configs", "--resume", "--sweep"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Every dataset, tiny, in its real format."""
    root = tmp_path_factory.mktemp("all")
    make_idx_dataset(root / "mnist", n_train=60, n_test=20)
    make_idx_dataset(root / "fashion-mnist", n_train=60, n_test=20, seed=3)
    (root / "timemachine").mkdir()
    (root / "timemachine" / "timemachine.txt").write_text(BOOK * 6, encoding="utf-8")
    write_wikitext(root / "wikitext-2")
    write_fra_txt(root)
    from d2l_lightning.models import build_model, save_export

    save_export(build_model("lenet"), {"arch": "lenet", "model_kwargs": {},
                                       "task": "image_classification"}, root / "export-lenet")
    return root


class Built:
    """The objects one command line builds, as train.py builds them (nothing is trained)."""

    def __init__(self, argv: list[str], root: Path, run_dir: Path) -> None:
        argv = [*argv, "--run-dir", str(run_dir)]
        if "--data-dir" not in argv and "linear_regression" not in argv:
            argv += ["--data-dir", str(root)]
        self.cfg = config_from_argv(argv)
        self.dm = build_data(self.cfg)
        self.dm.prepare_data()
        self.module = build_module(self.cfg, self.dm.data_info())
        from d2l_lightning.training.runs import choose_run_dir, make_run_dir

        try:
            folder = choose_run_dir(self.cfg, resuming=False)
            self.trainer = build_trainer(self.cfg, folder.path, self.module)
            self.run_dir = make_run_dir(folder)
        finally:
            import os

            os.environ.pop("_D2L_RUN_DIR", None)


def layer_sizes(module: nn.Module) -> set[int]:
    return {m.out_features for m in module.modules() if isinstance(m, nn.Linear)}


def ckpt_every(b: Built) -> set:
    from lightning.pytorch.callbacks import ModelCheckpoint

    return {c._every_n_train_steps for c in b.trainer.callbacks if isinstance(c, ModelCheckpoint)}


LM = ["--model", "gru", "--data", "time_machine"]
MT = ["--model", "transformer_mt", "--data", "fra_eng"]
# flag -> (command line, what must hold in the objects it builds)
PROBES = {
    "--model": (["--model", "mlp"], lambda b: type(b.module.model).__name__ == "MLP"),
    "--recipe": (["--model", "lenet", "--recipe", "modern"],
                 lambda b: b.module.optim.optimizer == "adamw"
                 and isinstance(b.module.model.net[1], nn.ReLU)),
    "--num-hiddens": (["--model", "mlp", "--num-hiddens", "17"],
                      lambda b: 17 in layer_sizes(b.module.model)),
    "--num-layers": ([*LM, "--num-layers", "3"], lambda b: b.module.model.rnn.num_layers == 3),
    "--dropout": (["--model", "mlp", "--dropout", "0.25"],
                  lambda b: any(isinstance(m, nn.Dropout) and m.p == 0.25
                                for m in b.module.model.modules())),
    "--model-arg": (["--model", "lenet", "--model-arg", "pool=max"],
                    lambda b: isinstance(b.module.model.net[2], nn.MaxPool2d)),
    "--data": (["--model", "mlp", "--data", "mnist"],
               lambda b: type(b.dm).__name__ == "MNISTDataModule"),
    "--data-dir": (["--model", "mlp", "--data-dir", "DATA"], lambda b: b.dm.data_dir.is_dir()),
    "--batch-size": (["--model", "mlp", "--batch-size", "7"], lambda b: b.dm.batch_size == 7),
    "--val-size": (["--model", "mlp", "--val-size", "9"],
                   lambda b: (b.dm.setup(), b.dm.sizes()["val"])[1] == 9),
    "--data-setting": (["--model", "mlp", "--data-setting", "book"],
                       lambda b: (b.dm.setup(), b.dm.sizes())[1] == {"train": 60, "val": 20,
                                                                      "test": 20}
                       and b.module.norm == ([0.0], [1.0])),
    "--num-steps": ([*LM, "--num-steps", "11"], lambda b: b.dm.num_steps == 11),
    "--level": ([*LM, "--level", "word"], lambda b: b.module.hparams.token_level == "word"),
    "--sampler": ([*LM, "--sampler", "sequential"], lambda b: b.module.hparams.carry_state),
    "--max-examples": ([*MT, "--max-examples", "50"], lambda b: b.dm.max_examples == 50),
    "--max-len": (["--model", "bert_tiny", "--data", "wikitext2", "--max-len", "24"],
                  lambda b: b.module.hparams.max_len == 24),
    "--data-arg": ([*LM, "--data-arg", "max_tokens=300"], lambda b: b.dm.max_tokens == 300),
    "--on-device": ([*LM, "--on-device", "true"], lambda b: b.dm.on_device is True),
    "--resize": (["--model", "mlp", "--resize", "20"],
                 lambda b: b.module.hparams.resize == 20 and 400 in {
                     m.in_features for m in b.module.model.modules()
                     if isinstance(m, nn.Linear)}),
    "--channels-last": (["--model", "lenet", "--channels-last"],
                        lambda b: b.module.hparams.channels_last),
    "--beam-size": ([*MT, "--beam-size", "3"], lambda b: b.module.hparams.beam_size == 3),
    "--length-penalty": ([*MT, "--length-penalty", "0.6"],
                         lambda b: b.module.hparams.length_penalty == 0.6),
    "--init-from": (["--model", "lenet", "--init-from", "DATA/export-lenet"],
                    lambda b: b.module.load_initial_weights().startswith("init from")),
    "--freeze": (["--model", "lenet", "--freeze", "net.0"],
                 lambda b: not b.module.model.net[0].weight.requires_grad
                 and b.module.model.net[3].weight.requires_grad),
    "--task-arg": ([*LM, "--task-arg", "sample_tokens=3"],
                   lambda b: b.module.hparams.sample_tokens == 3),
    "--optimizer": (["--model", "mlp", "--optimizer", "adam"],
                    lambda b: isinstance(b.module.configure_optimizers(), torch.optim.Adam)),
    "--lr": (["--model", "mlp", "--lr", "0.123"],
             lambda b: b.module.configure_optimizers().defaults["lr"] == 0.123),
    "--scheduler": (["--model", "mlp", "--scheduler", "plateau"],
                    lambda b: b.module.optim.scheduler == "plateau"),
    "--weight-decay": (["--model", "mlp", "--weight-decay", "0.01"],
                       lambda b: b.module.configure_optimizers().defaults["weight_decay"] == 0.01),
    "--momentum": (["--model", "mlp", "--momentum", "0.8"],
                   lambda b: b.module.configure_optimizers().defaults["momentum"] == 0.8),
    "--label-smoothing": (["--model", "mlp", "--label-smoothing", "0.1"],
                          lambda b: b.module.hparams.label_smoothing == 0.1),
    "--gradient-clip-val": (["--model", "mlp", "--gradient-clip-val", "0.5"],
                            lambda b: b.trainer.gradient_clip_val == 0.5),
    "--lr-mult": (["--model", "lenet", "--lr-mult", "backbone=0.5"],
                  lambda b: sorted(g["lr"] for g in b.module.configure_optimizers().param_groups)
                  == [0.05, 0.1]),
    "--max-epochs": (["--model", "mlp", "--max-epochs", "4"], lambda b: b.trainer.max_epochs == 4),
    "--max-steps": (["--model", "mlp", "--max-steps", "5"], lambda b: b.trainer.max_steps == 5),
    "--accumulate-grad-batches": (["--model", "mlp", "--accumulate-grad-batches", "3"],
                                  lambda b: b.trainer.accumulate_grad_batches == 3),
    "--accelerator": (["--model", "mlp", "--accelerator", "cpu"],
                      lambda b: type(b.trainer.accelerator).__name__ == "CPUAccelerator"),
    "--devices": (["--model", "mlp", "--accelerator", "cpu", "--devices", "2"],
                  lambda b: b.trainer.num_devices == 2),
    "--strategy": (["--model", "mlp", "--accelerator", "cpu", "--devices", "2", "--strategy",
                    "ddp_spawn"], lambda b: type(b.trainer.strategy).__name__ == "DDPStrategy"
                   and b.trainer.strategy._start_method == "spawn"),
    "--num-nodes": (["--model", "mlp", "--num-nodes", "2", "--accelerator", "cpu",
                     "--strategy", "ddp"], lambda b: b.trainer.num_nodes == 2),
    "--dist-timeout": (["--model", "mlp", "--accelerator", "cpu", "--devices", "2", "--strategy",
                        "ddp", "--dist-timeout", "42"],
                       lambda b: b.trainer.strategy._timeout.total_seconds() == 42),
    "--matmul-precision": (["--model", "mlp", "--matmul-precision", "high"],  # then reset
                           lambda b: (torch.get_float32_matmul_precision() == "high",
                                      torch.set_float32_matmul_precision("highest"))[0]),
    "--precision": (["--model", "mlp", "--precision", "bf16-mixed"],
                    lambda b: b.trainer.precision == "bf16-mixed"),
    "--compile": (["--model", "mlp", "--compile"],
                  lambda b: b.module.model._compiled_call_impl is not None),
    "--deterministic": (["--model", "mlp", "--deterministic"],
                        lambda b: torch.are_deterministic_algorithms_enabled()),
    "--limit-train-batches": (["--model", "mlp", "--limit-train-batches", "0.5"],
                              lambda b: b.trainer.limit_train_batches == 0.5),
    "--limit-val-batches": (["--model", "mlp", "--limit-val-batches", "2"],
                            lambda b: b.trainer.limit_val_batches == 2),
    "--limit-test-batches": (["--model", "mlp", "--limit-test-batches", "3"],
                             lambda b: b.trainer.limit_test_batches == 3),
    "--fast-dev-run": (["--model", "mlp", "--fast-dev-run", "2"],
                       lambda b: b.trainer.fast_dev_run == 2),
    "--progress-bar": (["--model", "mlp", "--progress-bar"],
                       lambda b: isinstance(b.trainer.progress_bar_callback,
                                            TerminalProgress)),
    "--progress-every": (["--model", "mlp", "--no-progress-bar", "--progress-every", "7"],
                         lambda b: b.trainer.progress_bar_callback.every_n_steps == 7),
    "--run-dir": (["--model", "mlp"], lambda b: Path(b.trainer.default_root_dir) == b.run_dir
                  and b.run_dir.is_dir()),
    "--seed": (["--model", "mlp", "--seed", "7"], lambda b: b.dm.seed == 7),
    "--logger": (["--model", "mlp", "--logger", "tensorboard"],
                 lambda b: any(type(lg).__name__ == "TensorBoardLogger"
                               for lg in b.trainer.loggers)),
    "--wandb-project": (["--model", "mlp", "--logger", "wandb", "--wandb-project", "p"],
                        lambda b: b.wandb["project"] == "p"),
    "--wandb-name": (["--model", "mlp", "--logger", "wandb", "--wandb-name", "n"],
                     lambda b: b.wandb["name"] == "n"),
    "--wandb-tags": (["--model", "mlp", "--logger", "wandb", "--wandb-tags", "a", "b"],
                     lambda b: b.wandb["tags"] == ["a", "b"]),
    "--ckpt-every-n-steps": (["--model", "mlp", "--ckpt-every-n-steps", "3"],
                             lambda b: 3 in ckpt_every(b)),
    "--diverged-after": (["--model", "mlp", "--diverged-after", "7"],
                         lambda b: any(getattr(c, "diverged_after", None) == 7
                                       for c in b.trainer.callbacks)),
    "--callback": (["--model", "mlp", "--callback", "EarlyStopping", "patience=2"],
                   lambda b: any(type(c).__name__ == "EarlyStopping" and c.patience == 2
                                 and c.monitor == "val/acc" and c.mode == "max"
                                 for c in b.trainer.callbacks)),
    "--test": (["--model", "mlp", "--no-test", "--fast-dev-run"], None),  # see below
}


def routed_flags() -> dict[str, str]:
    """flag -> section of every flag that is not a command."""
    out = {}
    for action in build_parser()._actions:
        if not action.option_strings or action.option_strings[0] in COMMANDS:
            continue
        section, dot, _ = action.dest.partition(".")
        assert dot and section in SECTIONS, action.option_strings
        out[action.option_strings[0]] = section
    return out


def test_every_flag_belongs_to_one_section_and_has_a_probe() -> None:
    assert set(routed_flags()) == set(PROBES)
    keys = [(s, k) for s, k in flag_actions(build_parser())]
    assert len(keys) == len(set(keys))  # no two flags set the same key


@pytest.mark.parametrize("flag", sorted(PROBES))
def test_every_flag_reaches_the_constructor_that_uses_it(flag, root, tmp_path,
                                                         monkeypatch) -> None:
    argv, check = PROBES[flag]
    argv = [a.replace("DATA", str(root)) for a in argv]
    if flag == "--test":  # read by train.py itself: no test split after fit
        run = tmp_path / "run"
        assert train.main([*argv, "--data-dir", str(root), "--run-dir", str(run),
                           "--no-progress-bar"]) == 0
        assert not any(k.startswith("test/") for k in read_results(run))
        return
    captured = {}
    if "wandb" in argv:  # the factory's arguments, without starting W&B
        from lightning.pytorch.loggers import CSVLogger

        import d2l_lightning.callbacks.wandb_logging as wl

        def fake(save_dir, run_id=None, **kwargs):
            captured.update(run_id=run_id, **kwargs)
            return CSVLogger(tmp_path / "fake")

        monkeypatch.setattr(wl, "make_wandb_logger", fake)
        (tmp_path / "run" / "wandb").mkdir(parents=True)
        (tmp_path / "run" / "wandb" / "run_id").write_text("abc\n")
    try:
        built = Built(argv, root, tmp_path / "run")
        built.wandb = captured
        assert check(built), flag
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("argv, needle", [
    (["--model", "gru", "--data", "time_machine", "--label-smoothing", "0.1"],
     "--label-smoothing: the language_modeling task takes no 'label_smoothing'"),
    (["--model", "gru", "--resize", "64"], "--resize: the language_modeling task takes no"),
    (["--model", "gru", "--channels-last"], "--channels-last: the language_modeling task"),
    (["--model", "lenet", "--model-arg", "num_classes=5"], "comes from the data"),
    (["--model", "lenet", "--optim.label_smoothing=0.1"], "belongs in section 'task'"),
    (["--model", "linear_regression", "--data-dir", "x"], "takes no 'data_dir'"),
    (["--optim.lr=fast"], "--optim.lr: optim.lr: expected float"),
    (["--trainer.max_epochs=2.5"], "trainer.max_epochs: expected int or None, got 2.5"),
    (["--trainer.epochs=2"], "section 'trainer' takes no 'epochs'"),
    (["--trainer.seed=2"], "'seed' belongs in section 'run', not 'trainer'"),
    (["--data-arg", "seed=2"], "'seed' belongs in section 'run', not 'data'"),
])
def test_a_key_nobody_takes_is_refused(argv, needle, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_config_file_then_flags_and_print_config_writes_nothing(tmp_path, monkeypatch,
                                                                capsys) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = write(tmp_path / "c.yaml", "model: {name: lenet, recipe: modern}\n"
                "optim: {lr: 1e-3}\ndata: {batch_size: 64}\n")
    assert train.main(["--config", str(cfg), "--batch-size", "32", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert list(printed) == list(SECTIONS)
    assert printed["model"]["activation"] == "relu"  # the recipe, under the file
    assert printed["optim"]["lr"] == 0.001  # "1e-3" read as a float
    assert printed["data"]["batch_size"] == 32  # the flag over the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
    # several files apply in order
    more = write(tmp_path / "d.yaml", "optim: {lr: 0.5}\n")
    cfg2 = config_from_argv(["--config", str(cfg), "--config", str(more)])
    assert cfg2["optim"]["lr"] == 0.5 and cfg2["model"]["recipe"] == "modern"


@pytest.mark.parametrize("text, needle", [
    ("optimiser: {lr: 0.1}\n", "unknown section 'optimiser'"),
    ("optim: {lrate: 0.1}\n", "takes no 'lrate'"),
    ("optim: {lr: fast}\n", "optim.lr: expected float"),
    ("data: {batch_size: 1.5}\n", "data.batch_size: expected int"),
    ("trainer: {precision: [32]}\n", "trainer.precision: expected 64 or 32 or 16 or"),
    ("trainer: {precision: fp8}\n", "trainer.precision: expected 64 or 32 or 16 or"),
    ("model: [lenet]\n", "must be a mapping"),
    ("- a\n- b\n", "must hold a mapping of sections"),
    ("model: {name: lenet\n", "does not parse as YAML"),
    ("model: {name: lenet7}\n", "unknown model 'lenet7'"),
    (None, "is neither a file nor a shipped config"),
])
def test_bad_config_files_are_one_sentence(text, needle, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    if text is not None:
        write(path, text)
    before = sorted(tmp_path.iterdir())
    assert train.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert sorted(tmp_path.iterdir()) == before


def test_replay_from_config_yaml_gives_identical_results(tmp_path) -> None:
    root = tmp_path / "data"
    make_idx_dataset(root / "mnist", n_train=120, n_test=30)
    first = tmp_path / "first"
    assert train.main(["--model", "lenet", "--recipe", "modern", "--data", "mnist",
                       "--data-dir", str(root), "--max-epochs", "2", "--batch-size", "16",
                       "--seed", "3", "--deterministic",
                       "--run-dir", str(first), "--no-progress-bar"]) == 0
    torch.use_deterministic_algorithms(False)
    again = tmp_path / "again"
    assert train.main(["--config", str(first / "config.yaml"), "--run-dir", str(again)]) == 0
    torch.use_deterministic_algorithms(False)
    a, b = read_results(first), read_results(again)
    metrics = [k for k in a if k.startswith(("val/", "test/"))]
    assert metrics and {k: a[k] for k in metrics} == {k: b[k] for k in metrics}
    ca, cb = (yaml.safe_load((d / "config.yaml").read_text()) for d in (first, again))
    assert ca.pop("run")["run_dir"] != cb.pop("run")["run_dir"] and ca == cb


def test_every_recipe_resolves_and_its_config_replays_to_itself() -> None:
    resolved = 0
    for name in model_names():
        for recipe in get_spec(name).recipes:
            layer = Layer("test")
            layer.set("model", "name", name)
            layer.set("model", "recipe", recipe)
            try:
                cfg = resolve([layer])
            except Exception as e:  # only the two models train.py cannot train
                assert name in ("bi_lstm", "bert_encoder"), (name, recipe, e)
                continue
            again = resolve([Layer("replay", yaml.safe_load(dump_config(cfg)))])
            assert again == cfg, (name, recipe)
            resolved += 1
    assert resolved >= 50


def test_every_recipe_field_has_a_section() -> None:
    names = {f.name for f in dataclasses.fields(Recipe)} - {"model_kwargs", "data_kwargs", "data"}
    assert names == set(RECIPE_SECTIONS)
    assert set(RECIPE_SECTIONS.values()) <= set(SECTIONS)


def test_flat_config_of_an_earlier_train_py_still_loads(tmp_path) -> None:
    old = write(tmp_path / "config.yaml", yaml.safe_dump({
        "model": "lenet", "data": "mnist", "recipe": "modern", "lr": 0.01, "batch_size": 64,
        "max_epochs": 2, "no_test": True, "compile": False, "task": "image_classification",
        "section": "7.6", "model_kwargs": {"pool": "avg"}, "data_kwargs": {"val_size": 10},
        "progress_bar": False, "resume": None, "num_hiddens": None, "val_size": None}))
    cfg = resolve([load_config_file(old)])
    assert (cfg["model"]["name"], cfg["model"]["pool"], cfg["data"]["val_size"]) == (
        "lenet", "avg", 10)
    assert cfg["optim"]["lr"] == 0.01 and cfg["run"]["test"] is False


def test_list_shows_every_recipe_with_its_values_and_file(capsys) -> None:
    assert train.main(["--list"]) == 0
    table = capsys.readouterr().out
    for name in model_names():
        spec = get_spec(name)
        assert name in table
        assert f"d2l_lightning/models/{Path(inspect.getsourcefile(spec.builder)).name}:" in table
    assert "d2l-0.17-deep" in table and "adamw lr=0.002 wd=0.01 cosine" in table
    assert train.main(["--list", "lstm"]) == 0
    detail = capsys.readouterr().out
    assert "defined in d2l_lightning/models/rnn.py:" in detail
    for recipe in get_spec("lstm").recipes:
        assert f"recipe '{recipe}'" in detail
    assert "sampler: sequential" in detail and "max_tokens: 10000" in detail


def test_config_yaml_of_a_run_names_every_section(tmp_path) -> None:
    run = tmp_path / "run"
    assert train.main(["--model", "linear_regression", "--fast-dev-run", "--run-dir", str(run),
                       "--no-progress-bar"]) == 0
    text = (run / "config.yaml").read_text()
    assert text.startswith("# train.py config of")
    saved = yaml.safe_load(text)
    assert list(saved) == list(SECTIONS) and saved["run"]["run_dir"] == str(run)
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert train.main(["--config", str(run / "config.yaml"), "--run-dir", str(run)]) == 2
    assert hashlib.sha256((run / "config.yaml").read_bytes()).hexdigest() == digest


def test_shipped_configs_resolve_to_the_command_they_document() -> None:
    """Each configs/ file is a row of docs/: it resolves, replays to itself, and equals the
    `python train.py ...` command written in its header."""
    import shlex

    files = [p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "sweeps"]
    assert len(files) >= 30
    for path in files:
        header = [line[2:] for line in path.read_text().splitlines() if line.startswith("# ")]
        doc = header[0].split(":")[0]
        assert (ROOT / doc).is_file(), path
        command = next(h for h in header if h.startswith("same as: python train.py "))
        cfg = resolve([load_config_file(path)])
        assert cfg == config_from_argv(shlex.split(command.split("train.py ", 1)[1])), path
        assert resolve([Layer("x", yaml.safe_load(dump_config(cfg)))]) == cfg
