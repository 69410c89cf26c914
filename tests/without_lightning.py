"""Run a Python script with Lightning and torchmetrics made unimportable.

    python tests/without_lightning.py SCRIPT [ARGS...]
"""

import runpy
import sys
from pathlib import Path

for name in ("lightning", "pytorch_lightning", "torchmetrics"):
    sys.modules[name] = None  # any import of them now raises ImportError
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
