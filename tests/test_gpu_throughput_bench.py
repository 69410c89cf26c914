"""``bench/gpu_throughput.py --smoke`` runs every workload on the CPU, so the script cannot rot."""

from __future__ import annotations

import importlib.util
import json

from conftest import ROOT, make_idx_dataset


def test_gpu_throughput_smoke_writes_every_workload(tmp_path, capsys) -> None:
    from test_language_modeling import BOOK, write_wikitext

    make_idx_dataset(tmp_path / "fashion-mnist", n_train=120, n_test=20)
    (tmp_path / "timemachine").mkdir()
    (tmp_path / "timemachine" / "timemachine.txt").write_text(BOOK * 6, encoding="utf-8")
    write_wikitext(tmp_path / "wikitext-2")
    spec = importlib.util.spec_from_file_location("gpu_throughput",
                                                  ROOT / "bench" / "gpu_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "out.json"
    assert bench.main(["--smoke", "--device", "cpu", "--data-dir", str(tmp_path),
                       "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["lenet", "resnet18", "lstm", "gpt"]
    for name, r in results.items():
        assert len(r["ratios"]) == 2 and all(x > 0 for x in r["rates"]["ours"]), name
        assert r["median_ratio"] > 0 and r["plain"] > 0, name
    table = capsys.readouterr().out
    assert "| lenet | 16 | 32-true |" in table and "ours/plain" in table
