"""No host synchronisation per training step (issue 16), for every task family.

Each family trains a few dozen steps through the Trainer and callbacks ``train.py`` builds,
with ``Tensor.item``, ``.tolist``, ``.cpu`` and ``__bool__`` / ``__float__`` / ``__int__``
patched to count their calls inside each training step (the batch fetch, the hooks, forward,
backward, the optimizer step, checkpoint and progress callbacks). On an accelerator each such
call waits for the device; here every call is counted, on the CPU as well.

Steps that may read values back (and why), with ``log_every_n_steps = 10``:

- the logging steps, step 0 and every 10th step (``(step + 1) % 10 == 0``): the task module
  sends the step's ``train/loss`` to the loggers (``float``), Lightning writes the logged
  metrics, and :class:`callbacks.TrainingMonitor` checks the loss for NaN/inf and divergence
  on an accelerator on these same steps (one stall instead of two);
- progress lines (every 30 s, or ``--progress-every N`` steps), which show the running loss:
  this test runs with ``--progress-every 10``, so they land on logging steps too;
- the last step of an epoch, followed by validation and the epoch means (outside the step).

On the CPU, ``TrainingMonitor`` reads the loss on every step by design (there is no device to
wait for, and a NaN is caught before it is applied); the test sets it to the accelerator
schedule, which is what runs on a GPU.
"""

from __future__ import annotations

import os
import traceback
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from conftest import make_idx_dataset
from d2l_lightning.training.command_line import config_from_argv
from d2l_lightning.training.run import build_data, build_module, build_trainer

PATCHED = ("item", "tolist", "cpu", "__bool__", "__float__", "__int__")


def write_family_data(root: Path, n_images: int = 600, book_copies: int = 20,
                      fra_pairs: int = 800, bert_paragraphs: bool = True) -> Path:
    """Tiny data of every family in its real format under ``root`` (also tests/test_compile)."""
    from test_language_modeling import BOOK, write_wikitext
    from test_seq2seq import write_fra_txt

    make_idx_dataset(root / "fashion-mnist", n_train=n_images, n_test=20)
    (root / "timemachine").mkdir()
    (root / "timemachine" / "timemachine.txt").write_text(BOOK * book_copies, encoding="utf-8")
    write_wikitext(root / "wikitext-2")
    if bert_paragraphs:  # paragraphs of three sentences for BERT's sentence pairs
        words = BOOK.lower().split()
        lines = [" . ".join(" ".join(words[(i + k) % len(words):(i + k) % len(words) + 5])
                            for k in (0, 5, 10)) + " ." for i in range(0, 600, 3)]
        (root / "wikitext-2" / "wiki.train.tokens").write_text("\n".join(lines) + "\n")
    write_fra_txt(root, n=fra_pairs)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_family_data(tmp_path_factory.mktemp("sync"))


FAMILIES = {
    "image_classification": ["--model", "lenet", "--batch-size", "16"],
    "image_attention": ["--model", "vit", "--data", "fashion_mnist", "--batch-size", "16",
                        "--model-arg", "num_blks=1"],
    "language_modeling_rnn": ["--model", "lstm", "--batch-size", "4", "--num-steps", "8",
                              "--sampler", "sequential", "--gradient-clip-val", "1"],
    "language_modeling_gpt": ["--model", "gpt", "--batch-size", "4", "--num-steps", "8"],
    "seq2seq": ["--model", "seq2seq_gru", "--data", "fra_eng", "--batch-size", "8"],
    "masked_lm": ["--model", "bert_tiny", "--batch-size", "4", "--max-len", "16"],
    "regression": ["--model", "linear_regression", "--batch-size", "8"],
}


def _allowed(frame: traceback.FrameSummary) -> bool:
    """The one sync per step we keep: packed RNN encoders need the lengths on the host.

    ``pack_padded_sequence`` takes CPU lengths (cuDNN's packed API), so the GRU encoder of
    ``seq2seq_gru`` / ``seq2seq_bahdanau`` copies ``src_valid_len`` back each step; avoiding it
    would mean one GRU per layer (a different state dict) or padded steps changing the state.
    Packing and unpacking then read the host lengths and batch sizes (no device involved).
    """
    return frame.filename.endswith(os.path.join("models", "seq2seq.py")) and \
        any(word in (frame.line or "") for word in ("lengths", "packed"))


def _sync_counts(argv: list[str], root: Path, run_dir: Path, steps: int = 32):
    """Calls of the patched methods per training step (``{step: [where, ...]}``)."""
    from d2l_lightning.callbacks import TrainingMonitor
    from d2l_lightning.training.runs import choose_run_dir, make_run_dir

    if "linear_regression" not in argv:
        argv = [*argv, "--data-dir", str(root)]
    argv = [*argv, "--run-dir", str(run_dir), "--max-steps", str(steps), "--max-epochs", "1",
            "--limit-val-batches", "1", "--no-progress-bar", "--progress-every", "10",
            "--accelerator", "cpu", "--no-test"]
    cfg = config_from_argv(argv)
    dm = build_data(cfg)
    dm.prepare_data()
    module = build_module(cfg, dm.data_info())
    try:
        folder = choose_run_dir(cfg, resuming=False)
        trainer = build_trainer(cfg, folder.path, module)
        run_dir = make_run_dir(folder)
    finally:
        os.environ.pop("_D2L_RUN_DIR", None)
    for cb in trainer.callbacks:
        if isinstance(cb, TrainingMonitor):
            cb.every_step_on_cpu = False  # the accelerator schedule (see the module docstring)
    calls: dict[int, list[str]] = defaultdict(list)
    state = {"step": None}
    originals = {name: getattr(torch.Tensor, name) for name in PATCHED}

    def counting(name):
        real = originals[name]

        def wrapper(self, *args, **kwargs):
            if state["step"] is not None:
                stack = traceback.extract_stack(limit=12)[:-1]
                if not any(_allowed(f) for f in stack):
                    f = stack[-1]
                    calls[state["step"]].append(f"{name} {Path(f.filename).name}:{f.lineno}")
            return real(self, *args, **kwargs)
        return wrapper

    loop = trainer.fit_loop.epoch_loop
    advance = loop.advance

    def timed_advance(*args, **kwargs):  # one training step, hooks and callbacks included
        state["step"] = trainer.global_step
        try:
            return advance(*args, **kwargs)
        finally:
            state["step"] = None

    loop.advance = timed_advance
    try:
        for name in PATCHED:
            setattr(torch.Tensor, name, counting(name))
        trainer.fit(module, datamodule=dm)
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
    return calls, trainer


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_host_sync_on_steps_that_do_not_log(family, root, tmp_path) -> None:
    calls, trainer = _sync_counts(FAMILIES[family], root, tmp_path / "run")
    assert trainer.global_step >= 12, trainer.global_step  # several non-logging steps ran
    last = trainer.num_training_batches - 1
    logging = {s for s in range(trainer.global_step)
               if s == 0 or (s + 1) % trainer.log_every_n_steps == 0 or s % (last + 1) == last}
    assert calls.get(trainer.log_every_n_steps - 1), "the counting saw no logging step"
    offenders = {s: c for s, c in calls.items() if s not in logging}
    assert not offenders, f"{family}: host syncs on non-logging steps: {offenders}"
    # DDP copies rank 0's buffers into every rank before each forward: per-rank sums in one
    # would all become rank 0's (tests/test_cli.py checks that on two real ranks, slow).
    buffers = [name for name, _ in trainer.lightning_module.named_buffers()]
    assert not [b for b in buffers if "train_sums" in b], buffers
