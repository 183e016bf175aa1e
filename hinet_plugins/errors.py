"""Errors that mean "the user's input is wrong": launchers print them as one message, without a traceback.

Policy: archs and losses raise ``ValueError`` naming their argument; the option layer (``built_from_options``,
called by ``basicsr_ext.preflight``) turns it into a ``ConfigError`` naming the option file and key. Errors that
only a running step can see (a batch too small for a loss, a stage count that does not match the network) are
``ConfigError``s naming the option key themselves.
"""
import copy


class ConfigError(ValueError):
    """An option file, dataset or checkpoint does not match what is expected; the message says which and why."""


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN/inf; the last checkpoint on disk is intact."""


# what a constructor raises for a bad argument (a missing key, a wrong type or value, a list too short)
BUILD_ERRORS = (TypeError, ValueError, KeyError, IndexError)


def one_line(err) -> str:
    """The message of ``err`` on one line. An error raised in a DataLoader worker reaches the main process
    re-raised as ``type(err)(text)`` whose text is "Caught X in DataLoader worker ...", "Original Traceback ...",
    the traceback lines and "<module>.X: message"; the original message (its last line) is returned then."""
    text = str(err).strip()
    if 'Original Traceback' in text:
        last = text.splitlines()[-1]
        name = type(err).__name__ + ': '
        text = last.split(name, 1)[1] if name in last else last
    return ' '.join(text.split('\n'))


def first_line(err, limit: int = 300) -> str:
    """'<type>: <first line of the message>' (at most ``limit`` characters), to quote a library's error."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:limit]


def built_from_options(build, spec: dict, key: str, path: str):
    """``build(spec)`` (basicsr's ``build_network`` / ``build_loss`` on a copy of ``spec``), with an error of its
    arguments as a ConfigError naming the option file ``path`` and the option ``key`` (``network_g``,
    ``train.pixel_opt``): the error policy's one boundary."""
    try:
        return build(copy.deepcopy(spec))
    except ConfigError as err:  # says its key already, or gets it
        raise ConfigError(f'{path}: {err}' if str(err).startswith(key.split('[')[0].split('.')[0])
                          else f'{path}: {key}: {err}') from None
    except BUILD_ERRORS as err:
        raise ConfigError(f"{path}: {key} ({spec.get('type')}) cannot be built: {first_line(err)}") from None
