"""The failures evomerge names: a user's mistake, a candidate that failed, and a search that found nothing.

Each is an `EvomergeError`, which the CLI prints as one line before exiting with its `exit_code`
(boundary.py maps the errors of Python and the libraries). `UsageError` is a user's mistake (a wrong path, a
bad value, incompatible models): exit 2, having written nothing. `MergeFailure` is a candidate that could not
be built (NaN, Inf, out of memory): the search records it as a failed trial and goes on; outside a search the
CLI treats it like a usage error. `SearchFailed` is a search in which no candidate could be scored: exit 3.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class EvomergeError(Exception):
    """A failure the CLI reports as its message, one line, and `exit_code`."""

    exit_code = 2


class UsageError(EvomergeError):
    """A mistake in the user's input; the message says what is wrong and how to fix it."""


class MergeFailure(EvomergeError):
    """A merge that ran but produced an unusable model (for example NaN or Inf in a tensor)."""


class SearchFailed(EvomergeError):
    """A search that stopped, or ended, with no candidate scored: every one it tried failed."""

    exit_code = 3


def first_validation_problem(error: ValidationError) -> str:
    """pydantic's first complaint as one line, 'field.path: message'."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def validated(model: type[Model], data: Any, origin: str, context: dict[str, Any] | None = None) -> Model:
    """`model` validated from plain data (with pydantic's validation `context`, which validators read); any
    problem is one UsageError line that starts with `origin`."""
    try:
        return model.model_validate(data, context=context)
    except UsageError as error:
        raise UsageError(f"{origin}: {error}") from None
    except ValidationError as error:
        raise UsageError(f"{origin}: {first_validation_problem(error)}") from None
