"""Errors that mean "the user's input is wrong": launchers print them as one message, without a traceback."""


class ConfigError(ValueError):
    """An option file, dataset or checkpoint does not match what is expected; the message says which and why."""


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN/inf; the last checkpoint on disk is intact."""


def one_line(err):
    """The message of ``err`` on one line. An error raised in a DataLoader worker reaches the main process
    re-raised as ``type(err)(text)`` whose text is "Caught X in DataLoader worker ...", "Original Traceback ...",
    the traceback lines and "<module>.X: message"; the original message (its last line) is returned then."""
    text = str(err).strip()
    if 'Original Traceback' in text:
        last = text.splitlines()[-1]
        name = type(err).__name__ + ': '
        text = last.split(name, 1)[1] if name in last else last
    return ' '.join(text.split('\n'))
