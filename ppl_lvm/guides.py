"""Guides: built-in variational families chosen by name, user guides, and amortised encoders.

=================  ==========================================================================================
name               family
=================  ==========================================================================================
``"normal"``       mean-field normal (``"meanfield"``, ``"diag"`` too): one Normal per latent site, sampled at
                   the site itself (no auxiliary ``*_unconstrained`` sites), so analytic KLs apply
``"fullrank"``     a multivariate normal over all continuous latents (``"mvn"``), :class:`AutoMultivariateNormal`
``"delta"``        point estimates, MAP (``"map"``), :class:`AutoDelta`
=================  ==========================================================================================

Discrete latent sites are hidden from the built-in guides: the ELBO sums them out by enumeration instead.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.distributions.transforms as T
from pyro.distributions import transforms
from pyro.distributions.transforms import biject_to
from pyro.infer import autoguide

from .interpreter import current_interpreter
from .model import Guide, Model, ModelStructure
from .runtime import current_fit

__all__ = ["MeanFieldNormal", "Amortized", "AmortizedFlow", "AmortizedNormal", "GUIDES", "build_guide", "empty_guide"]


class MeanFieldNormal(autoguide.AutoNormal):
    """A mean-field normal guide that samples each latent site directly.

    Unlike :class:`pyro.infer.autoguide.AutoNormal`, each site is drawn from ``Normal(loc, scale)`` (pushed through
    the bijection to the site's support when it is constrained) under the site's own name, so
    ``TraceMeanField_ELBO`` can use an analytic KL where one is registered and posterior samples carry no helper
    sites.
    """

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            transform = biject_to(site["fn"].support)
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                loc, scale = self._get_loc_and_scale(name)
                base = dist.Normal(loc, scale).to_event(self._event_dims[name])
                if _is_identity(transform):
                    fn = base
                else:
                    fn = dist.TransformedDistribution(base, transform.with_cache())
                result[name] = pyro.sample(name, fn)
        return result


def _is_identity(transform: Any) -> bool:
    while isinstance(transform, T.IndependentTransform):
        transform = transform.base_transform
    return isinstance(transform, T.ComposeTransform) and not transform.parts


class Amortized(abc.ABC):
    """The shared part of the amortised guides: ``encoder(data)`` gives the parameters of ``q(site | data)`` for one
    local latent site, row by row; a subclass says which distribution (:meth:`_distribution`).

    Parameters
    ----------
    encoder : torch.nn.Module
        Maps the model's data argument (a batch of rows) to the parameters of the site's distribution.
    site : str
        The local latent site the encoder predicts (e.g. ``"z"`` of a VAE).
    data : str, optional
        The model argument fed to the encoder; default: the model's first argument.
    """

    #: dimensions of the encoder's first output right of the site's batch dimensions, beyond its event dimensions
    _extra_param_dims = 0

    def __init__(self, encoder: torch.nn.Module, site: str, data: str | None = None):
        if not isinstance(encoder, torch.nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        self.encoder = encoder
        self.site = site
        self.data = data
        self._frames: list | None = None
        self._event_dim = 0
        self._arg_names: list[str] = []

    def bind(self, model: Model, structure: ModelStructure) -> Amortized:
        info = structure.sites.get(self.site)
        if info is None or info.kind != "latent":
            latents = [s.name for s in structure.latent_sites]
            raise ValueError(f"{type(self).__name__}: the model has no latent site '{self.site}'; its latents: {latents}")
        self._check_site(info)
        self._frames = [structure.plates[p] for p in info.plates]
        self._event_dim = len(info.event_shape)
        self._arg_names = model.argument_names
        self.data = self.data or self._arg_names[0]
        return self

    def _check_site(self, info: Any) -> None:
        """Refuse a model site this family cannot stand for (a subclass's check; this one accepts every site)."""
        return None

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._frames is None:
            raise RuntimeError(f"{type(self).__name__} must be bound to a model; pass it to lvm.infer(guide=...)")
        bound = dict(zip(self._arg_names, args, strict=False)) | kwargs
        x = bound[self.data]
        interp = current_interpreter()  # a planned step (ppl_lvm.interpreter) runs the statements itself
        if interp is None:
            pyro.module("encoder", self.encoder, update_module_params=True)
        out = self.encoder(x)
        params = out if isinstance(out, tuple) else (out,)
        right = self._event_dim + self._extra_param_dims
        fit = current_fit()
        plate = pyro.plate if interp is None else lambda name, size, subsample=None, dim=None: interp.plate(
            name, size, subsample, None, dim)
        with ExitStack() as stack:
            for frame in self._frames:
                if fit is not None and frame.name in fit.subsample:
                    full, indices = fit.subsample[frame.name]
                    stack.enter_context(plate(frame.name, full, subsample=indices, dim=frame.dim))
                else:
                    stack.enter_context(plate(frame.name, params[0].shape[frame.dim - right], dim=frame.dim))
            fn = self._distribution(*params)
            return pyro.sample(self.site, fn) if interp is None else interp.sample(self.site, fn, None, None)

    @abc.abstractmethod
    def _distribution(self, *params: torch.Tensor) -> Any:
        """q(site | data) from the encoder's outputs."""

    def description(self) -> str:
        """How the guide is named in results (``result.guide_name``)."""
        return f"amortised {type(self).__name__} over '{self.site}'"


class AmortizedNormal(Amortized):
    """An amortised mean-field normal guide: ``encoder(data) -> (loc, scale)`` for one local latent site.

    Parameters
    ----------
    encoder : torch.nn.Module
        Maps the model's data argument (a batch of rows) to ``(loc, scale)`` of the site's shape.
    site : str
        The local latent site the encoder predicts (e.g. ``"z"`` of a VAE).
    data : str, optional
        The model argument fed to the encoder; default: the model's first argument.

    Examples
    --------
    >>> import torch
    >>> class Encoder(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = torch.nn.Linear(4, 4)
    ...     def forward(self, x):
    ...         loc, log_scale = self.net(x).chunk(2, -1)
    ...         return loc, log_scale.exp()
    >>> guide = AmortizedNormal(Encoder(), site="z")
    """

    def _distribution(self, loc: torch.Tensor, scale: torch.Tensor) -> Any:
        return dist.Normal(loc, scale).to_event(self._event_dim)

    def description(self) -> str:
        return f"amortised normal over '{self.site}'"


class AmortizedFlow(AmortizedNormal):
    """:class:`AmortizedNormal` followed by ``num_flows`` affine autoregressive transforms (an inverse autoregressive
    flow, Kingma et al. 2016): ``z = f_L(... f_1(u))``, ``u ~ Normal(encoder(x))``, each ``f_l`` an
    :func:`pyro.distributions.transforms.affine_autoregressive` (a MADE network, shared by all rows), so ``q(z | x)``
    can be correlated and skewed where the diagonal normal cannot.

    Parameters
    ----------
    encoder : torch.nn.Module
        Maps the data argument to ``(loc, scale)`` of the base normal, of the site's shape.
    site : str
        The local latent site; it must have one event dimension of size at least 2 (a vector per row).
    num_flows : int
        The number of affine autoregressive transforms (default 2).
    hidden_dims : list of int, optional
        Hidden layer sizes of each transform's MADE network; default Pyro's ``[3 * dim + 1]``.
    data : str, optional
        The model argument fed to the encoder; default: the model's first argument.
    """

    def __init__(self, encoder: torch.nn.Module, site: str, num_flows: int = 2, hidden_dims: list[int] | None = None,
                 data: str | None = None):
        super().__init__(encoder, site, data)
        if isinstance(num_flows, bool) or not isinstance(num_flows, int) or num_flows < 1:
            raise ValueError(f"num_flows must be a positive integer, got {num_flows!r}")
        self.num_flows = num_flows
        self.hidden_dims = hidden_dims
        self.flows: torch.nn.ModuleList | None = None

    def bind(self, model: Model, structure: ModelStructure) -> AmortizedFlow:
        super().bind(model, structure)
        shape = tuple(structure.sites[self.site].event_shape)
        if len(shape) != 1 or shape[0] < 2:
            raise ValueError(f"AmortizedFlow: site '{self.site}' has event shape {shape}; an autoregressive flow needs "
                             "one event dimension of size >= 2 (use lvm.AmortizedNormal for a scalar latent)")
        if self.flows is None:
            dtype = next(iter(self.encoder.parameters()), torch.empty(0)).dtype
            self.flows = torch.nn.ModuleList(
                [transforms.affine_autoregressive(shape[0], self.hidden_dims) for _ in range(self.num_flows)]
            ).to(dtype)
        return self

    def _distribution(self, loc: torch.Tensor, scale: torch.Tensor) -> Any:
        if current_interpreter() is None:  # a planned step: the fit holds the flows' weights in the store
            pyro.module("flow", self.flows, update_module_params=True)
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), list(self.flows))

    def description(self) -> str:
        return f"amortised flow over '{self.site}' ({self.num_flows} affine autoregressive)"


def empty_guide(*args: Any, **kwargs: Any) -> None:
    """The guide of a model whose latents are all enumerated: nothing to sample."""


GUIDES: dict[str, Callable[[Callable], Any]] = {
    "normal": lambda m: MeanFieldNormal(m),
    "meanfield": lambda m: MeanFieldNormal(m),
    "diag": lambda m: MeanFieldNormal(m),
    "fullrank": lambda m: autoguide.AutoMultivariateNormal(m),
    "mvn": lambda m: autoguide.AutoMultivariateNormal(m),
    "delta": lambda m: autoguide.AutoDelta(m),
    "map": lambda m: autoguide.AutoDelta(m),
}


def build_guide(spec: Any, model: Model, structure: ModelStructure) -> tuple[Callable, str]:
    """Turn ``guide=`` into a callable guide. Returns ``(guide, description)``.

    ``None`` picks the model's own ``@model.guide`` if it has one, else ``"normal"`` (or no guide at all when
    every latent is discrete and will be enumerated).
    """
    if spec is None:
        if model.user_guide is not None:
            return model.user_guide, f"user guide {model.user_guide.__name__}()"
        spec = "normal" if structure.continuous_latents else "none"
    if isinstance(spec, str):
        key = spec.lower()
        if key == "none":
            return empty_guide, "none (all latents enumerated)"
        if key not in GUIDES:
            raise ValueError(f"unknown guide {spec!r}; built-in guides: {sorted(GUIDES)} (or pass a function)")
        hidden = [s.name for s in structure.discrete_latents]
        target = poutine.block(model, hide=hidden) if hidden else model
        return GUIDES[key](target), key
    if isinstance(spec, Amortized):
        return spec.bind(model, structure), spec.description()
    if isinstance(spec, (Guide, autoguide.AutoGuide)) or callable(spec):
        name = getattr(spec, "__name__", type(spec).__name__)
        return spec, f"user guide {name}"
    raise TypeError(f"guide must be a name {sorted(GUIDES)}, a function or an AutoGuide, got {type(spec).__name__}")
