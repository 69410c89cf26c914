"""Summarise translation runs (results.json, metrics.csv, export) as Markdown rows.

    python -m bench.translation_results runs/book-seq2seq_gru runs/book-transformer_mt ...

Per run: epochs, steps, training time, target tokens/s (padding included, as TrainingMonitor
counts), the last epoch's training loss, val/test metrics, and the book's four sentences
translated greedily from the export with their BLEU(k=2).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from d2l_lightning.datamodules.fra_eng_text import translate
from d2l_lightning.datamodules.text import Vocab
from d2l_lightning.lit_models.translation import BOOK_PAIRS
from d2l_lightning.models import load_exported
from d2l_lightning.models.bleu import bleu


def last_train_loss(run: Path) -> float | None:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    values = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    return values[-1] if values else None


def book_translations(run: Path) -> list[tuple[str, str, float]]:
    model, cfg = load_exported(run / "export")
    texts = translate(model, [s for s, _ in BOOK_PAIRS], Vocab.from_tokens(cfg["src_vocab"]),
                      Vocab.from_tokens(cfg["tgt_vocab"]), cfg["num_steps"],
                      cfg["max_decode_len"])
    return [(s, text, bleu(text, ref, k=2)) for (s, ref), text in zip(BOOK_PAIRS, texts)]


def main(runs: list[str]) -> None:
    print("| model | recipe | epochs | steps | train time (s) | tokens/s | train loss | "
          "val loss | val BLEU | test BLEU greedy | test BLEU beam 4 | book BLEU(k=2) mean |")
    print("|" + "---|" * 12)
    books = {}
    for r in runs:
        run = Path(r)
        res = json.loads((run / "results.json").read_text())
        loss = last_train_loss(run)
        books[res["model"] + " " + res["recipe"]] = book_translations(run)
        mean = sum(b[2] for b in books[res["model"] + " " + res["recipe"]]) / 4
        print(f"| {res['model']} | {res['recipe']} | {res['epochs']} | {res['global_step']} | "
              f"{res['train_time_sec']:.0f} | {res['train_samples_per_sec']:.0f} | "
              f"{loss:.3f} | {res['val/loss']:.3f} | {res['val/bleu']:.2f} | "
              f"{res['test/bleu']:.2f} | {res.get('test/bleu_beam', float('nan')):.2f} | "
              f"{mean:.3f} |")
    print()
    for name, rows in books.items():
        print(f"{name}: " + "; ".join(f"`{s}` => `{h}` ({b:.3f})" for s, h, b in rows))


if __name__ == "__main__":
    main(sys.argv[1:])
