"""Mamba on the CPU: training tokens/s of the three scans, and generation cost per token vs GPT.

    python -m bench.mamba_scan [--lengths 64,128,256,512,1024,2048] [--batch-sizes 1,tokens]
        [--rounds 3] [--gen-length 4096] [--models] [--plot docs/mamba_bench.png]

(train) The registered ``mamba`` at its Time Machine recipe size (4 x 118, vocab 28), one full
    training step (forward, cross-entropy, backward, AdamW) on random tokens, for each sequence
    length and each scan: ``sequential`` (the reference loop), ``chunked`` (the default) and
    ``associative`` (log-depth over the whole sequence). Rounds rotate the order of the scans;
    the table gives the median tokens/s and the chunked / sequential ratio (target >= 5x at
    length 1,024). A batch size is a number, or ``tokens``: ``--tokens // length`` rows.
(--models) Training tokens/s of ``mamba``, ``gpt`` (their recipes) and a 1 x 222 LSTM (the same
    parameter count) on the recipe's 64 x 64 batches, rounds rotating the order.
(generate) Batch 1, greedy, from a one-token prompt: the time of each ``model(token, state)``
    step of the registered ``mamba`` (state: ``(conv_state, ssm_state)`` per layer) and ``gpt``
    (its recipe, but ``max_len`` = the generated length so that the key/value cache keeps
    growing; ``generate()`` would slide at ``max_len``), median over the steps just before each
    length, and the size of the state there. Untrained weights: the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from d2l_lightning.models import build_model, get_spec

SCANS = ("sequential", "chunked", "associative")
VOCAB = 28


def train_rate(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: int, T: int,
               steps: int) -> float:
    """Tokens/s of ``steps`` training steps (after one untimed warm-up step)."""
    X = torch.randint(0, VOCAB, (batch, T + 1))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        logits, _ = model(X[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), X[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return batch * T * steps / sum(times)


def bench_training(a: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    model = build_model("mamba", vocab_size=VOCAB, **get_spec("mamba").recipe().model_kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = []
    for bs in a.batch_sizes.split(","):
        for T in (int(t) for t in a.lengths.split(",")):
            batch = max(1, a.tokens // T) if bs == "tokens" else int(bs)
            rates: dict[str, list[float]] = {s: [] for s in SCANS}
            for rnd in range(a.rounds):
                for scan in SCANS[rnd % 3:] + SCANS[:rnd % 3]:
                    model.scan = scan
                    rates[scan].append(train_rate(model, opt, batch, T, a.steps))
            med = {s: statistics.median(v) for s, v in rates.items()}
            rows.append({"config": bs, "batch": batch, "T": T, **med})
            print(f"| {batch} | {T:,} | " + " | ".join(f"{med[s]:,.0f}" for s in SCANS)
                  + f" | {med['chunked'] / med['sequential']:.2f}x "
                  f"| {med['associative'] / med['sequential']:.2f}x |", flush=True)
    return rows


def matched_models() -> dict[str, torch.nn.Module]:
    """mamba and gpt at their Time Machine recipes, and the 1 x 222 LSTM of about their size."""
    return {"mamba": build_model("mamba", vocab_size=VOCAB,
                                 **get_spec("mamba").recipe().model_kwargs),
            "gpt": build_model("gpt", vocab_size=VOCAB, **get_spec("gpt").recipe().model_kwargs),
            "lstm": build_model("lstm", vocab_size=VOCAB, num_hiddens=222, embed_size=222,
                                dropout=0.1)}


def bench_models(a: argparse.Namespace) -> None:
    """Training tokens/s of the three matched models on the recipe's 64 x 64 batches."""
    torch.manual_seed(0)
    models = matched_models()
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}
    rates: dict[str, list[float]] = {n: [] for n in models}
    names = list(models)
    for rnd in range(a.rounds):
        for n in names[rnd % 3:] + names[:rnd % 3]:
            rates[n].append(train_rate(models[n], opts[n], 64, 64, a.steps))
    print("\n| model | parameters | training tokens/s (batch 64 x 64, median of rounds) |"
          "\n|---|---|---|")
    for n, m in models.items():
        print(f"| {n} | {sum(p.numel() for p in m.parameters()):,} | "
              f"{statistics.median(rates[n]):,.0f} |")


def state_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for layer in state for t in layer)


@torch.no_grad()
def bench_generation(a: argparse.Namespace) -> dict[str, list[tuple[int, float, int]]]:
    torch.manual_seed(0)
    n = a.gen_length
    models = {
        "mamba": build_model("mamba", vocab_size=VOCAB,
                             **get_spec("mamba").recipe().model_kwargs),
        "gpt": build_model("gpt", vocab_size=VOCAB,
                           **{**get_spec("gpt").recipe().model_kwargs, "max_len": n + 1}),
    }
    marks = [m for m in (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384) if m <= n]
    out: dict[str, list[tuple[int, float, int]]] = {}
    for name, model in models.items():
        model.eval()
        logits, state = model(torch.zeros(1, 1, dtype=torch.long))
        times = []
        for _ in range(n - 1):
            token = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            t0 = time.perf_counter()
            logits, state = model(token, state)
            times.append(time.perf_counter() - t0)
            if len(times) + 1 in marks:  # tokens behind the state: len(times) + 1
                window = times[-min(32, len(times)):]
                out.setdefault(name, []).append(
                    (len(times) + 1, 1e3 * statistics.median(window), state_bytes(state)))
    print("\n| tokens so far | " + " | ".join(f"{m} ms/token | {m} state" for m in models)
          + " |\n|---|" + "---|---|" * len(models))
    for i, mark in enumerate(marks):
        cells = [f"{out[m][i][1]:.2f} | {out[m][i][2] / 1024:,.0f} KiB" for m in models]
        print(f"| {mark:,} | " + " | ".join(cells) + " |")
    return out


def plot(path: str, rows: list[dict], gen: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"sequential": "C0", "chunked": "C1", "associative": "C2"}
    for config, style in zip(dict.fromkeys(r["config"] for r in rows), ("o-", "s--", "^:")):
        pts = [r for r in rows if r["config"] == config]
        label = "batch 1" if config == "1" else (
            f"{pts[0]['batch'] * pts[0]['T']:,} tokens/step" if config == "tokens"
            else f"batch {config}")
        for scan, color in colors.items():
            ax1.plot([r["T"] for r in pts], [r[scan] for r in pts], style, color=color,
                     label=f"{scan}, {label}")
    ax1.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="training tokens/s",
            title="Mamba 4x118: the three scans")
    ax1.legend(fontsize=6, loc="lower left")
    for name, pts in gen.items():
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
    ax2.set(xscale="log", xlabel="tokens generated so far", ylabel="ms per new token",
            title="generation, batch 1")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"plot: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="64,128,256,512,1024,2048")
    p.add_argument("--batch-sizes", default="1,tokens", help="comma-separated; 'tokens': "
                   "--tokens // length rows")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--steps", type=int, default=2, help="timed training steps per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--gen-length", type=int, default=4096, help="0: skip generation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", action="store_true",
                   help="also: training tokens/s of mamba, gpt and a 222-unit LSTM, matched sizes")
    p.add_argument("--plot", help="write a PNG of both benchmarks")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.1f}")
    print("| batch | length | " + " | ".join(f"{s} tokens/s" for s in SCANS)
          + " | chunked / sequential | associative / sequential |\n|---|---|---|---|---|---|---|")
    rows = bench_training(a) if a.lengths else []
    gen = bench_generation(a) if a.gen_length else {}
    if a.models:
        bench_models(a)
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    if a.plot:
        plot(a.plot, rows, gen)


if __name__ == "__main__":
    main()
