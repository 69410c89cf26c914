"""LightningDataModules and the Lightning-free data code they share.

Importing this package does not import Lightning, so ``predict.py`` can use
:mod:`datamodules.idx`, :mod:`datamodules.text`, :mod:`datamodules.fra_eng_text` and
:mod:`datamodules.corpora` with torch alone. The DataModules are looked up by name in
:mod:`datamodules.registry`.
"""

from .download import DataError, resolve_data_dir

__all__ = ["DataError", "resolve_data_dir"]
