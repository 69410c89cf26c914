"""The error every configuration check raises (``train.py`` exits 2 with its sentence)."""


class ConfigError(Exception):
    """A configuration that is refused before anything runs: one sentence naming its source."""
