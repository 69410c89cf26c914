"""What ``train.py`` is built on: the sectioned run config, run folders and resume, sweeps.

- :mod:`training.config`: the command line and config files as one schema with six sections
  (``model``, ``data``, ``task``, ``optim``, ``trainer``, ``run``), resolved against the model's
  recipe and checked against the constructors that take each section.
- :mod:`training.runs`: choosing a run folder and planning a resume from the folder alone.
- :mod:`training.sweep`: grid and random searches, one run folder per trial.
"""
