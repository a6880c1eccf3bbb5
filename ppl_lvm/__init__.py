"""ppl_lvm: latent variable models as plain Python, fitted by exact EM, SVI or importance-weighted bounds.

>>> import ppl_lvm as lvm
>>> from ppl_lvm import dist, constraints
"""

from __future__ import annotations

import os

import pyro.distributions as dist
from pyro.distributions import constraints

from . import alignment, backends
from ._version import __version__ as __version__
from .api import infer, methods
from .compare import compare
from .diagnostics import DiagnosticWarning
from .em import EMDegeneracyWarning, EMResult
from .errors import (
    ConvergenceWarning,
    DataError,
    DataWarning,
    FitError,
    InferenceWarning,
    ModelCheckError,
    ModelDefinitionError,
    PplLvmError,
    PplLvmWarning,
    UnsupportedModelError,
)
from .fit import FitOptions, linear_warmup
from .guides import AmortizedNormal, MeanFieldNormal
from .io import load
from .model import Guide, Model, ModelStructure, guide, model
from .primitives import deterministic, latent, markov, module, observe, param, plate
from .result import Result

# In a source checkout the ready-made models sit in the top-level models/ folder; a wheel installs them as
# ppl_lvm/models (pyproject's package-dir). Make `ppl_lvm.models` resolve in the checkout too.
_checkout_models = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
if os.path.isfile(os.path.join(_checkout_models, "__init__.py")) and not os.path.isdir(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
):
    __path__.append(os.path.dirname(_checkout_models))  # noqa: F821 - the package's own __path__

__all__ = [
    "AmortizedNormal",
    "ConvergenceWarning",
    "DataError",
    "DataWarning",
    "DiagnosticWarning",
    "EMDegeneracyWarning",
    "EMResult",
    "FitError",
    "FitOptions",
    "Guide",
    "InferenceWarning",
    "MeanFieldNormal",
    "Model",
    "ModelCheckError",
    "ModelDefinitionError",
    "ModelStructure",
    "PplLvmError",
    "PplLvmWarning",
    "Result",
    "UnsupportedModelError",
    "alignment",
    "backends",
    "compare",
    "constraints",
    "deterministic",
    "dist",
    "guide",
    "infer",
    "latent",
    "linear_warmup",
    "load",
    "markov",
    "methods",
    "model",
    "module",
    "observe",
    "param",
    "plate",
]
