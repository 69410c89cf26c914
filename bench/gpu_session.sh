#!/usr/bin/env bash
# The prepared shot for a lent GPU (issue 16): run from the repository root on the device machine,
# with the datasets carried in .devdata/ (fashion-mnist, fra-eng, wikitext-2, timemachine: 47 MB).
#
#   here:    mkdir -p .devdata && cp -r ../shared/data/{fashion-mnist,fra-eng,wikitext-2,timemachine} .devdata/
#   device:  bash bench/gpu_session.sh smoke            # ~2 min: every gpu row 2 steps, throughput
#   device:  bash bench/gpu_session.sh profile 500      # the gpu profile within 500 s
#   here:    cp FILES_AT/records/*.json docs/records/gpu/ && python bench/reproduce.py --tables --device-profile gpu
#
# Everything measured is written under $OUT (the device tool brings it back).
set -u -o pipefail
OUT=${OUT:-build/gpu-session}
mkdir -p "$OUT"
export D2L_DATA_DIR=${D2L_DATA_DIR:-.devdata} PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
case "${1:-smoke}" in
  smoke)
    python bench/reproduce.py --smoke --device-profile gpu 2>&1 | grep -E '^smoke' | tee "$OUT/smoke.txt"
    timeout 300 python bench/gpu_throughput.py --device cuda --json "$OUT/throughput.json" \
      2>&1 | tail -40 | tee "$OUT/throughput.txt"
    ;;
  profile)
    python bench/reproduce.py --device-profile gpu --budget-s "${2:-500}" --runs-dir "$OUT/runs" \
      --records-dir "$OUT/records" --no-docs 2>&1 | grep -vE 'Warning|^\s*$' | tail -80 \
      | tee "$OUT/profile.txt"
    find "$OUT/runs" -name '*.ckpt' -delete  # bring back results, not weights
    ;;
  *) echo "usage: bash bench/gpu_session.sh smoke | profile [BUDGET_S]" >&2; exit 2 ;;
esac
