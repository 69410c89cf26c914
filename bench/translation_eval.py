"""Held-out BLEU and decoding speed of an exported translation model, plain PyTorch.

    python -m bench.translation_eval RUN_DIR [--beam-size 1 4] [--alpha 0 0.6] [--split test]

Rebuilds the run's split from its config.yaml (same data arguments and seed), decodes it from
RUN_DIR/export in batches exactly like ``TranslationTask.test_step`` (references: target rows up to
``<eos>``, their ``<unk>`` never matching) and prints corpus BLEU (sacreBLEU, tokenize "none",
0-100) and generated tokens per second for each beam size / length penalty.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torchmetrics.text import SacreBLEUScore

from d2l_lightning.datamodules.fra_eng import EngFraDataModule
from d2l_lightning.datamodules.fra_eng_text import UNK_REF, detokenize
from d2l_lightning.datamodules.text import UNK, Vocab
from d2l_lightning.models import load_exported
from d2l_lightning.models.decoding import search
from d2l_lightning.training.config import load_config_file, resolve


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--beam-size", type=int, nargs="+", default=[1, 4])
    p.add_argument("--alpha", type=float, nargs="+", default=[0.0])
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--data-dir")
    args = p.parse_args()
    run = Path(args.run)
    cfg = resolve([load_config_file(run / "config.yaml")])
    data = {k: v for k, v in cfg["data"].items() if k not in ("name", "data_dir")}
    dm = EngFraDataModule(args.data_dir or cfg["data"]["data_dir"], seed=cfg["run"]["seed"],
                          **data)
    dm.setup()
    model, export = load_exported(run / "export")
    torch.set_grad_enabled(False)
    tgt_vocab = Vocab.from_tokens(export["tgt_vocab"])
    assert tgt_vocab == dm.tgt_vocab, "the rebuilt split's vocabulary differs from the export's"
    src_vocab = Vocab.from_tokens(export["src_vocab"])
    src_all, _, valid_all, tgt_all = getattr(dm, f"{args.split}_set")
    refs = [[detokenize(t, tgt_vocab).replace(UNK, UNK_REF)] for t in tgt_all.tolist()]
    bos, eos = tgt_vocab["<bos>"], tgt_vocab["<eos>"]
    for beam in args.beam_size:
        for alpha in args.alpha if beam > 1 else [0.0]:
            hyps, generated = [], 0
            t0 = time.perf_counter()
            for i in range(0, len(src_all), args.batch_size):
                out = search(model, src_all[i:i + args.batch_size],
                             valid_all[i:i + args.batch_size], bos, eos,
                             export["max_decode_len"], beam, alpha)
                generated += sum(len(h) + 1 for h in out)
                hyps += [detokenize(h, tgt_vocab) for h in out]
            dt = time.perf_counter() - t0
            score = float(SacreBLEUScore(tokenize="none")(hyps, refs)) * 100
            print(f"{run.name} {args.split} ({len(hyps)} sentences) beam {beam} alpha {alpha}: "
                  f"BLEU {score:.2f}; {generated / dt:.0f} generated tokens/s "
                  f"({len(hyps) / dt:.0f} sentences/s, {dt:.1f} s)", flush=True)
    for i in range(3):
        print(f"  {detokenize(src_all[i].tolist(), src_vocab)} => {hyps[i]}  (ref: {refs[i][0]})")


if __name__ == "__main__":
    main()
