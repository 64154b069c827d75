"""Errors a user can act on.

Every exception that reaches the CLI as an `XattnError` is printed as one line and
exits with code 2; anything else is a bug and keeps its traceback.
"""


class XattnError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


class SpecError(XattnError):
    """The study spec is malformed or inconsistent."""


class DataError(XattnError):
    """A data file is missing, unreadable or inconsistent."""


class StoreError(XattnError):
    """A tracking store, Optuna storage or workspace cannot be used."""


class PathError(XattnError):
    """A folder or file a command must write to cannot be written."""


class StudyNotFound(XattnError):
    """No study of that name exists in the tracking store."""


class ModelNotFound(XattnError):
    """No registered model, alias or version matches a `models:/` URI."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """An exception's message as a clause of a one-line error: its first line, or its type."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def one_line(error: BaseException, limit: int = 300, *, with_type: bool = False) -> str:
    """An exception's whole message folded onto one line, cut with "..." past `limit`; a log
    line about an unexpected failure (`with_type`) starts with the exception's type."""
    text = " ".join(str(error).split()) or type(error).__name__
    if with_type:
        text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
