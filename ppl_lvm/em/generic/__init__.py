"""Model-agnostic exact EM for Pyro / ppl_lvm models whose latents are all discrete with finite support.

The E-step enumerates every discrete latent in parallel (``poutine.enum``), packs each sample site's log-prob
into a named-dimension tensor (a *factor*), and contracts the factors to the exact ``log Z = log p(x)`` with
Pyro's plated tensor variable elimination (:func:`pyro.ops.contract.contract_to_tensor`).  The posterior
marginal of every factor is the gradient of ``log Z`` with respect to a detached copy of that factor's
log-prob (a standard identity of sum-product networks), so one backward pass gives all responsibilities,
pairwise HMM marginals included, in time linear in the chain length.

The M-step maximises ``Q(theta | theta_old) = sum_f sum(marginal_f * log_prob_f(theta))`` over the
unconstrained values of the ``pyro.param`` s with L-BFGS, and keeps the result only if ``Q`` did not decrease
(generalised EM), so the marginal log-likelihood never decreases.

Every function works in the caller's parameter store (run it inside ``pyro.get_param_store().scope()``).

Layout of factors and marginals
-------------------------------
``EStep.factors[name]`` is Pyro's *packed* log-prob of site ``name``: size-1 dims are squeezed away and the
remaining dims are named by the characters of ``EStep.dims[name]`` (also set as the tensor attribute
``_pyro_dims``).  Plate dims use the symbols of ``EStep.plate_to_symbol``; the enumeration dim of an enumerated
site uses ``EStep.enum_symbol[name]``.  ``EStep.marginals[name]`` has the same shape and dims: for a factor over
plate ``n`` and enumerated sites ``z_i``, ``z_j`` it holds ``p(z_i, z_j | x)`` for every ``n``.  Use
:func:`site_marginal` to get a single site's responsibilities laid out as ``(*plate dims, K)``.
"""

from .estep import EStep, e_step, marginal_log_likelihood, site_marginal, site_marginals
from .fit import fit_generic_em
from .mstep import expected_complete_log_likelihood, generic_m_step
from .size import DEFAULT_MAX_BYTES, check_enumeration_size, estimate_enumeration_bytes

__all__ = [
    "DEFAULT_MAX_BYTES",
    "EStep",
    "check_enumeration_size",
    "e_step",
    "estimate_enumeration_bytes",
    "expected_complete_log_likelihood",
    "fit_generic_em",
    "generic_m_step",
    "marginal_log_likelihood",
    "site_marginal",
    "site_marginals",
]
