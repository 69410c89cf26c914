"""``python export.py CKPT``: a checkpoint to plain PyTorch (:mod:`d2l_lightning.cli.export`).

The checkout's entry point; installed, the same command is ``d2l-export``.
"""

import sys

from d2l_lightning.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
