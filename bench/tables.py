"""Records of reproduced rows, and the markdown tables generated from them.

A record (``docs/records/PROFILE/DATA__STEM.json``) is what ``bench/reproduce.py`` keeps of one
run: the row, the command, the run's ``results.json`` numbers, wall time, the predicted time, the
hardware and the software versions. The tables in ``docs/`` are generated from the records,
between ``<!-- reproduce:PROFILE begin -->`` and ``<!-- reproduce:PROFILE end -->`` markers in
the document named by each row's config file; nothing between the markers is typed by hand.
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Any

from bench.rows import ROOT, ROWS, Row

RECORDS = ROOT / "docs" / "records"


def record_path(row: Row, records: Path = RECORDS) -> Path:
    """Where ``row``'s record lives: ``RECORDS/PROFILE/DATA__STEM.json``."""
    return records / row.profile / (row.name.replace("/", "__") + ".json")


def read_record(row: Row, records: Path = RECORDS) -> dict[str, Any] | None:
    """``row``'s record, or ``None``."""
    path = record_path(row, records)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_record(row: Row, record: dict[str, Any], records: Path = RECORDS) -> Path:
    """Write ``record`` atomically (a measured record is never replaced by a skip)."""
    path = record_path(row, records)
    old = read_record(row, records)
    if record.get("status") == "skipped" and old and old.get("status") == "done":
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def hardware() -> dict[str, Any]:
    """This machine: CPU model and count, memory, GPU (if any)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(mem_kb / 2**20),
            "gpu": gpu, "gpus": torch.cuda.device_count()}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _machine(rec: dict[str, Any]) -> str:
    hw, v = rec.get("hardware", {}), rec.get("versions", {})
    where = hw.get("gpu") or f"{hw.get('cpu', '?')}, {hw.get('cpus', '?')} CPUs"
    cuda = f", CUDA {v['cuda']}" if hw.get("gpu") and v.get("cuda") else ""
    return (f"{where}; torch {v.get('torch')}{cuda}, lightning {v.get('lightning')}, "
            f"python {v.get('python')}")


def table_row(row: Row, title: str, rec: dict[str, Any] | None) -> str:
    """One markdown table line for ``row`` (its record, or "not run yet")."""
    target = row.target.text if row.target else "-"
    # the documents are in docs/
    config = f"[`{row.config}`](../d2l_lightning/configs/{row.config}.yaml)"
    if rec is None or rec.get("status") != "done":
        why = rec.get("reason", "not run") if rec else "not run yet"
        return f"| {title} | {config} | {row.source} | {target} | {why} | | | | | |"
    res = rec["results"]
    shown = "; ".join(f"{k} {_fmt(res[k])}" for k in row.metrics if k in res)
    met = "-" if row.target is None else {True: "yes", False: "**no**", None: "?"}[
        row.target.met(res)]
    predicted = rec.get("predicted_s")
    wall = f"{rec['wall_s']:,.0f}" + (f" ({predicted:,.0f})" if predicted else "")
    step = res.get("global_step")  # "?" (not a crash) for results without it
    steps = f"{res.get('epochs', '?')} ({'?' if step is None else f'{step:,}'})"
    return (f"| {title} | {config} | {row.source} | {target} | {shown} | {met} | {steps} | "
            f"{wall} | {res.get('train_samples_per_sec', 0):,.0f} | {_machine(rec)}, "
            f"{rec.get('date', '')} |")


HEAD = ("| row | config (`python train.py --config NAME`) | source | target | results | met | "
        "epochs (steps) | wall s (predicted) | train samples/s | machine, date |\n"
        "|---|---|---|---|---|---|---|---|---|---|")


def render(rows: list[tuple[Row, str]], records: Path = RECORDS) -> str:
    """The generated table of ``(row, title)`` pairs, from their records."""
    return "\n".join([HEAD, *(table_row(r, title, read_record(r, records)) for r, title in rows)])


def marker(profile: str, end: bool = False) -> str:
    """The comment lines that delimit a generated table."""
    if end:
        return f"<!-- reproduce:{profile} end -->"
    return (f"<!-- reproduce:{profile} begin: generated by bench/reproduce.py from "
            f"docs/records/{profile}/; edits here are overwritten -->")


def replace_between(text: str, name: str, block: str) -> str | None:
    """``text`` with what lies between ``<!-- NAME begin`` and ``NAME end -->`` (markers
    included) replaced by ``block``; ``None`` when there are no such markers."""
    pattern = re.compile(rf"<!-- {re.escape(name)} begin.*?<!-- {re.escape(name)} end -->", re.S)
    return pattern.sub(lambda _: block, text) if pattern.search(text) else None


def update_docs(profile: str, records: Path = RECORDS, root: Path = ROOT) -> list[Path]:
    """Regenerate ``profile``'s tables in every document that has rows; return those changed.

    A document without markers gets a new section at its end.
    """
    changed, by_doc = [], {}
    for row in (r for r in ROWS if r.profile == profile):
        doc, title = row.header()  # each config file read once
        by_doc.setdefault(doc, []).append((row, title))
    for doc, rows in sorted(by_doc.items()):
        table = render(rows, records)
        path = root / doc
        text = path.read_text(encoding="utf-8") if path.exists() else f"# {doc}\n"
        block = f"{marker(profile)}\n{table}\n{marker(profile, end=True)}"
        new = replace_between(text, f"reproduce:{profile}", block)
        if new is None:
            new = (text.rstrip("\n") + f"\n\n## Reproduced rows ({profile} profile)\n\n"
                   f"Generated by `python -m bench.reproduce --device-profile {profile}` "
                   "(`make reproduce`); each row's command is `python train.py --config "
                   "CONFIG`.\n\n" + block + "\n")
        if new != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed
