"""The Dive into Deep Learning curriculum as a PyTorch Lightning codebase.

Subpackages, from the bottom up:

- :mod:`d2l_lightning.models`: plain-PyTorch architectures, their registry and recipes, and
  export loading (no Lightning);
- :mod:`d2l_lightning.datamodules`: the datasets as LightningDataModules, and their
  Lightning-free text and image helpers;
- :mod:`d2l_lightning.lit_models`: one LightningModule per task family;
- :mod:`d2l_lightning.callbacks`: export, monitoring, progress, plots, loggers;
- :mod:`d2l_lightning.training`: the run config, run folders and the public API
  (:func:`d2l_lightning.training.fit`);
- :mod:`d2l_lightning.cli`: the command lines (``d2l-train``, ``d2l-predict``, ``d2l-export``).

Importing this package imports nothing else (``predict`` and ``--help`` stay light).
"""

__version__ = "0.1.0"
