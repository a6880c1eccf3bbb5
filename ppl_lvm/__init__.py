"""ppl_lvm: latent variable models as plain Python, fitted by exact EM, SVI or importance-weighted bounds.

>>> import ppl_lvm as lvm
>>> from ppl_lvm import dist, constraints
"""

from __future__ import annotations

import pyro.distributions as dist
from pyro.distributions import constraints

from . import backends, threads
from ._version import __version__ as __version__
from .api import infer, methods
from .compare import compare
from .discrete_guides import AmortizedBernoulli, AmortizedCategorical
from .em.stream import chunks
from .errors import (
    ConvergenceWarning,
    DataError,
    DataWarning,
    DiagnosticWarning,
    DistributedError,
    EMDegeneracyWarning,
    FitError,
    InferenceWarning,
    ModelCheckError,
    ModelDefinitionError,
    PplLvmError,
    PplLvmWarning,
    UnsupportedModelError,
)
from .fit_options import FitOptions, linear_warmup, temperature_schedule
from .guides import AmortizedFlow, AmortizedNormal, MeanFieldNormal
from .model import Guide, Model, guide, model
from .posterior import alignment
from .posterior_distance import compare_posteriors
from .primitives import deterministic, latent, markov, module, observe, param, plate
from .results import EMResult, MCMCResult, Result, StochasticEMResult, load
from .structure import ModelStructure

__all__ = [
    "AmortizedBernoulli",
    "AmortizedCategorical",
    "AmortizedFlow",
    "AmortizedNormal",
    "ConvergenceWarning",
    "DataError",
    "DataWarning",
    "DiagnosticWarning",
    "DistributedError",
    "EMDegeneracyWarning",
    "EMResult",
    "FitError",
    "FitOptions",
    "Guide",
    "InferenceWarning",
    "MCMCResult",
    "StochasticEMResult",
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
    "chunks",
    "compare",
    "compare_posteriors",
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
    "temperature_schedule",
    "threads",
]
