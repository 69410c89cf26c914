"""``python predict.py ...``: plain-PyTorch inference from an export (d2l_lightning.cli.predict).

The checkout's entry point; installed, the same command is ``d2l-predict``.
"""

import sys

from d2l_lightning.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
