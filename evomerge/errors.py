"""The two kinds of failure evomerge distinguishes: a user's mistake, and a candidate that failed.

`UsageError` is a user's mistake (a wrong path, a bad value, incompatible models): the CLI prints its message
as one line and exits with code 2, having written nothing. `MergeFailure` is a candidate that could not be
built (NaN, Inf, out of memory): the search records it as a failed trial and goes on; outside a search the CLI
treats it like a usage error.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class UsageError(Exception):
    """A mistake in the user's input; the message says what is wrong and how to fix it."""


class MergeFailure(Exception):
    """A merge that ran but produced an unusable model (for example NaN or Inf in a tensor)."""


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
