"""``python train.py ...``: train, validate or test a model (:mod:`d2l_lightning.cli.train`).

The checkout's entry point; installed, the same command is ``d2l-train``.
"""

import sys

from d2l_lightning.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
