"""What a user can cause, as exception types: the CLI prints any of them as one line naming the file,
record or key, with exit code 2 (the traceback only with ``--debug`` or ``MLDM_DEBUG=1``).

Anything else that escapes a command is a bug in mldm: one line that says so, exit code 1.
The subclasses also derive from the built-in type callers used to catch (``ValueError`` ...), so code
written against those keeps working.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input a user can fix; the message names what to fix."""


class ConfigError(UserError):
    """A bad command line or config key."""


class DataError(UserError, ValueError):
    """An unreadable or invalid data file or record (the message names the file and the record)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read or written; the message names the file."""


class RunDirError(UserError):
    """A run or sample directory that cannot be used: in use by another writer, or holding a user's files."""


class NonFiniteSamples(UserError):
    """Sampling produced NaN/inf; nothing was written. The message names the likely cause."""


def find_cause(error: BaseException, types=(UserError,)) -> BaseException | None:
    """``error`` or the first of its causes (``raise ... from``) of one of ``types``: hydra's ``instantiate``
    wraps what a builder raised."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, types):
            return error
        seen.add(id(error))
        error = error.__cause__
    return None
