"""Errors that mean "the user's input is wrong": launchers print them as one message, without a traceback."""


class ConfigError(ValueError):
    """An option file, dataset or checkpoint does not match what is expected; the message says which and why."""


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN/inf; the last checkpoint on disk is intact."""
