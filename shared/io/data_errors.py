"""Errors about a user's file as the CLI prints them: one ``DataError`` (``shared.errors``) per bad file or
record, one line, ``"<path>: <what is wrong>"`` or ``"<path>: record <k>: <what>"``. Loaders wrap the many
exception types of their parsers (PIL, trimesh, rdkit, numpy) with these at the file boundary."""
from __future__ import annotations

import numpy as np

from shared.errors import DataError

MAX_DETAIL = 200    # a parser may quote a whole (binary) line of the file in its message
MAX_EXCERPT = 60


def one_line(text) -> str:
    """``text`` with every run of whitespace (line breaks included) as one space."""
    return " ".join(str(text).split())


def describe(error: BaseException) -> str:
    """A third-party exception as ``"<Type>: <message>"`` on one line, cut to ``MAX_DETAIL`` characters."""
    text = one_line(error)
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 3] + "..."


def excerpt(line: str) -> str:
    """``repr`` of a line quoted from a user's file, cut so a binary "line" does not flood the message."""
    return repr(line if len(line) <= MAX_EXCERPT else line[:MAX_EXCERPT] + "...")


def data_error(path, what: str, record: int | None = None) -> DataError:
    where = f"{path}: record {record}" if record is not None else str(path)
    return DataError(one_line(f"{where}: {what}"))


def reason_of(error: BaseException, path) -> str:
    """The message of a ``data_error`` about ``path`` without its leading ``"<path>: "`` (for skip lists)."""
    return str(error).removeprefix(f"{path}: ")


def non_finite_rows(array, rows: str = "rows") -> str | None:
    """None when every value is finite, else which rows are not, e.g. ``"NaN/inf in 2 of 9 atoms (first: #4)"``
    (rows counted from 1, as a person counts the atoms or points of a file)."""
    array = np.atleast_1d(np.asarray(array))
    if array.dtype.kind not in "fc" or np.isfinite(array).all():
        return None
    bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
    return f"NaN/inf in {len(bad)} of {len(array)} {rows} (first: #{bad[0] + 1})"


def check_finite(array, path, what: str = "coordinates", record: int | None = None, rows: str = "rows") -> None:
    """Refuse NaN/inf read from a file: they would reach training or sampling and be blamed on something else."""
    problem = non_finite_rows(array, rows)
    if problem is not None:
        raise data_error(path, f"non-finite {what}: {problem}", record)
