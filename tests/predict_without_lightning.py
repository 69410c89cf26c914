"""Run predict.py's CLI with Lightning and torchmetrics made unimportable."""

import runpy
import sys
from pathlib import Path

for name in ("lightning", "pytorch_lightning", "torchmetrics"):
    sys.modules[name] = None  # any import of them now raises ImportError
root = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(root))
sys.argv = [str(root / "predict.py"), *sys.argv[1:]]
runpy.run_path(str(root / "predict.py"), run_name="__main__")
