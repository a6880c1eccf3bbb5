"""Exception and warning classes.

Every error raised for a user's model names the site and the source line it came from, so the classes here carry
that location and format it the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SourceLocation:
    """A place in the user's source code: ``file:line`` plus the text of that line."""

    filename: str
    lineno: int
    function: str = ""
    text: str = ""

    def __str__(self) -> str:
        where = f"{self.filename}:{self.lineno}"
        if self.function:
            where += f" in {self.function}()"
        return where


class PplLvmError(Exception):
    """Base class of every error raised by ppl_lvm."""


class ModelDefinitionError(PplLvmError):
    """The model's code cannot be compiled: a missing or duplicate site name, unreadable source, ..."""

    def __init__(self, message: str, location: SourceLocation | None = None):
        self.location = location
        if location is not None:
            message = f"{location}: {message}"
            if location.text:
                message += f"\n    {location.text.strip()}"
        super().__init__(message)


class ModelCheckError(PplLvmError):
    """A pre-flight check of the model failed (shapes, supports, plates); names the site and source line."""

    def __init__(self, message: str, site: str | None = None, location: SourceLocation | None = None):
        self.site = site
        self.location = location
        head = ""
        if site is not None:
            head += f"site '{site}'"
        if location is not None:
            head += f" ({location})" if head else str(location)
        if head:
            message = f"{head}: {message}"
        if location is not None and location.text:
            message += f"\n    {location.text.strip()}"
        super().__init__(message)


class DataError(PplLvmError, ValueError):
    """The data given to :func:`ppl_lvm.infer` cannot be used (NaN, wrong dtype or shape, unknown argument)."""


class FitError(PplLvmError, RuntimeError):
    """A fit stopped before it finished (e.g. a NaN loss). The best result reached so far is kept in ``.result``."""

    def __init__(self, message: str, result: Any = None, step: int | None = None):
        self.result = result
        self.step = step
        self.outcome: Any = None  # what the engine reached; the result layer turns it into ``result``
        super().__init__(message)


class UnsupportedModelError(PplLvmError, ValueError):
    """The chosen inference method cannot fit this model; the message says which site and what to use instead."""


class DistributedError(PplLvmError, RuntimeError):
    """A data-parallel fit cannot run: no torch.distributed process group, or the ranks disagree on the data."""


class PplLvmWarning(UserWarning):
    """Base class of ppl_lvm's warnings; filter it to silence them all."""


class DataWarning(PplLvmWarning):
    """The data were converted (e.g. integers given to a continuous likelihood)."""


class ConvergenceWarning(PplLvmWarning):
    """A fit ended by its step or iteration budget before its convergence criterion held."""


class InferenceWarning(PplLvmWarning):
    """The inference method fell back to a weaker estimator for some site (e.g. a Monte Carlo KL)."""


class EMDegeneracyWarning(PplLvmWarning):
    """A component or state became degenerate during EM.

    Raised (as a warning) when a component receives no responsibility, when a
    covariance matrix is singular and needed extra jitter, or when a row of a
    transition matrix has no expected transitions.  The fit continues with the
    repaired parameters; the warning tells the user their model has more
    components than the data supports (or the data has duplicates).
    """


class DiagnosticWarning(PplLvmWarning):
    """A health check of a fitted approximation failed (heavy-tailed importance ratios, posterior collapse)."""
