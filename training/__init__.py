"""What ``train.py`` is built on: the sectioned run config, run folders and resume, sweeps.

- :mod:`training.flags`: the command line; every flag sets one key of one section.
- :mod:`training.config`: config files and the command line as layers of one schema with six
  sections (``model``, ``data``, ``task``, ``optim``, ``trainer``, ``run``), resolved against
  the model's recipe.
- :mod:`training.checks`: each section checked against the constructor that takes it.
- :mod:`training.runs`: choosing a run folder, and planning a resume from the folder alone.
- :mod:`training.faults`: missing hardware, a full disk and SIGTERM as one-sentence errors.
- :mod:`training.listing`: ``train.py --list [MODEL]``.
- :mod:`training.sweep`: grid and random searches, one run folder per trial.
"""
