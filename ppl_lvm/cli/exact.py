"""Where ``ppl-lvm fit`` knows the answer: the closed-form maximum of PPCA and factor analysis (the fit starts
there and is checked against it afterwards), and the hint that EM fits a model exactly.

PPCA's maximum-likelihood parameters are closed-form (:func:`ppl_lvm.models.factor.ppca_mle`); factor analysis has
closed-form EM steps (:func:`ppl_lvm.models.factor.factor_analysis_mle`). The variational fit starts from that
maximum with its guide at the exact posterior of those parameters, so the ELBO starts tight; after the fit the exact
log-likelihood of the returned parameters is compared with the maximum, and a fit that ended below it says so.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.poutine as poutine
import torch

from ..data import bind_data
from ..models.factor import factor_analysis_log_marginal, factor_analysis_mle, ppca_log_marginal, ppca_mle
from .inputs import BuiltinModel

__all__ = ["CLOSED_FORM_MODELS", "ClosedForm", "closed_form", "em_hint", "reached"]

#: built-in models with a closed-form maximum, and the name of their noise parameter
CLOSED_FORM_MODELS = {"ppca": "sigma", "factor_analysis": "psi"}
#: methods that start from a parameter state and use the model's guide (the gradient methods)
GRADIENT_METHODS = ("svi", "meanfield", "iwae", "renyi")


class ClosedForm:
    """The maximum-likelihood parameters of a PPCA or factor-analysis fit and their exact log-likelihood."""

    def __init__(self, function: str, kwargs: dict[str, Any], q: int):
        self.function, self.kwargs, self.x, self.q = function, kwargs, kwargs["x"], q
        x = self.x
        self.noise = CLOSED_FORM_MODELS[function]
        self.params = ppca_mle(x, q) if function == "ppca" else factor_analysis_mle(x, q)
        self.maximum = self.log_likelihood(self.params)
        self.how = "closed form" if function == "ppca" else "EM with closed-form steps, to convergence"

    def log_likelihood(self, params: dict[str, Any]) -> float:
        exact = ppca_log_marginal if self.function == "ppca" else factor_analysis_log_marginal
        return exact(self.x, params["W"], params["mu"], params[self.noise])

    def posterior(self) -> dict[str, torch.Tensor]:
        """The guide's parameters at the exact posterior ``N(M^{-1} W^T Psi^{-1} (x - mu), M^{-1})``."""
        W, mu = self.params["W"], self.params["mu"]
        psi = (self.params["sigma"] ** 2).expand(len(mu)) if self.function == "ppca" else self.params["psi"]
        Wp = W / psi.unsqueeze(-1)
        M_inv = torch.linalg.inv(torch.eye(self.q, dtype=W.dtype) + W.T @ Wp)
        A = M_inv @ Wp.T
        return {"encoder_weight": A, "encoder_bias": -A @ mu, "posterior_scale_tril": torch.linalg.cholesky(M_inv)}

    def start_state(self, model: Any, with_guide: bool) -> dict:
        """A parameter-store state holding the maximum (and, ``with_guide``, the exact posterior of the model's own
        guide), for :func:`ppl_lvm.backends.problem.make_problem`'s ``init_state``."""
        values = dict(self.params, **(self.posterior() if with_guide else {}))
        kwargs = self.kwargs
        with pyro.get_param_store().scope(), torch.random.fork_rng(devices=[]):
            poutine.trace(model).get_trace(**kwargs)
            if with_guide:
                poutine.trace(model.user_guide).get_trace(**kwargs)
            store = pyro.get_param_store()
            for name, value in values.items():
                if name in store:
                    store[name] = value.detach().to(store[name].dtype).reshape(store[name].shape)
            return store.get_state()


def closed_form(entry: BuiltinModel | None, model: Any, data: dict[str, Any]) -> ClosedForm | None:
    """The closed-form maximum of a built-in PPCA or factor analysis on ``data``; None for other models."""
    if entry is None or entry.function not in CLOSED_FORM_MODELS:
        return None
    kwargs = bind_data(model, data).kwargs
    q = kwargs.get("q", model.signature.parameters["q"].default)
    return ClosedForm(entry.function, kwargs, q)


def reached(form: ClosedForm, result: Any) -> tuple[float, bool] | None:
    """The exact log-likelihood of the fitted parameters and whether it is the maximum (to 1e-4 relative or 0.05
    nats, the float32 rounding of the parameters); None when the result holds no such parameters."""
    params = getattr(result, "params", None) or {}
    if not all(name in params for name in ("W", "mu", form.noise)):
        return None
    exact = form.log_likelihood(params)
    return exact, form.maximum - exact <= max(0.05, 1e-4 * abs(form.maximum))


def em_hint(result: Any, method: str, model_name: str) -> str | None:
    """A hint to use ``--method em`` after a variational fit of a model whose latents are all enumerable."""
    structure = getattr(result, "structure", None)
    if method not in GRADIENT_METHODS or structure is None or not structure.latent_sites:
        return None
    if structure.continuous_latents or not all(site.enumerable for site in structure.discrete_latents):
        return None
    names = ", ".join(site.name for site in structure.latent_sites)
    bound = getattr(result, "elbo", None)
    at = f" (this {method} fit ends at a bound of {bound:.1f})" if isinstance(bound, float) else ""
    return (f"every latent of {model_name} ({names}) is discrete with finite support, so --method em maximises its "
            f"exact likelihood, with exact E-steps and restarts (--option n_init=5){at}")
