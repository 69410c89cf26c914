"""The command lines: ``train``, ``predict``, ``export`` (``d2l-train``, ``d2l-predict``, ...).

Each module's ``main(argv) -> exit code`` is a console script of the installed package and is
run by the checkout's ``train.py``, ``predict.py`` and ``export.py``. ``--help`` of each imports
neither torch nor Lightning.
"""
