"""scikit-learn estimators: a ppl_lvm mixture fitted by exact EM behind ``fit`` / ``predict`` / ``score``.

:class:`MixtureEstimator` wraps any model that ``lvm.infer(..., method="em")`` recognises as a finite mixture (the
ready-made ones of :mod:`ppl_lvm.models.mixtures`, or your own written the natural way) and
:class:`GaussianMixture` is the Gaussian mixture of :func:`ppl_lvm.models.mixtures.gaussian_mixture` under
scikit-learn's names. Both keep scikit-learn's estimator contract (``__init__`` stores its parameters verbatim,
``validate_data`` checks the data, numpy float64 outputs, fitted attributes end in ``_``, ``NotFittedError`` before
``fit``), so they work in ``Pipeline``, ``GridSearchCV`` (:func:`bic_scorer` chooses by BIC) and ``cross_val_score``.
The fit and every query run in float64 (torch's default dtype is set and restored), as scikit-learn's does.

Limits: new rows are scored with the closed-form mixture kernels, so a model that EM does not recognise as a
mixture (a hidden Markov chain, a model on the generic EM route) is refused at ``fit`` with
``UnsupportedModelError``; fit those with ``lvm.infer``. Setting torch's default dtype is process-wide: do not
fit in several threads at once.

This module needs scikit-learn >= 1.6 (``pip install "ppl_lvm[sklearn]"``); ``import ppl_lvm`` does not import it.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, DensityMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as err:  # scikit-learn is an optional extra; validate_data needs >= 1.6
    raise ImportError(
        "ppl_lvm.sklearn wraps ppl_lvm models as scikit-learn estimators and needs scikit-learn >= 1.6 "
        f'({err}); install it with: pip install "ppl_lvm[sklearn]" (or pip install "scikit-learn>=1.6")'
    ) from err

from .api import infer
from .errors import UnsupportedModelError
from .model import check_model
from .models.mixtures import COVARIANCE_TYPES, gaussian_mixture
from .sklearn_scoring import bic_scorer

__all__ = ["GaussianMixture", "MixtureEstimator", "bic_scorer"]

#: options of lvm.infer that are the estimator's own parameters (fit_options may not repeat them)
_OWN_OPTIONS = ("n_init", "max_iter", "tol", "init_params", "reg_covar")


@contextlib.contextmanager
def _float64() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _seed(random_state: Any) -> int:
    """An integer seed from scikit-learn's ``random_state``: an int is used as it is; ``None`` (numpy's global
    generator) and a ``RandomState`` instance each give a fresh seed drawn from them."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be a non-negative integer, None or a RandomState, got {random_state}")
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _numpy(value: torch.Tensor) -> np.ndarray:
    array = value.detach().cpu().numpy()
    return array.astype(np.float64) if array.dtype.kind == "f" else array


class MixtureEstimator(DensityMixin, BaseEstimator):
    """A ppl_lvm mixture model fitted by exact EM, as a scikit-learn density estimator and clusterer.

    ``fit(X)`` calls ``lvm.infer(model, {data: X, **model_kwargs}, method="em", ...)`` where ``data`` is the
    model's first argument; the fitted :class:`~ppl_lvm.EMResult` is ``result_``.

    Parameters
    ----------
    model : Model or function
        A model decorated with ``@lvm.model`` whose first argument takes the data, an array of shape
        ``(n_samples, n_features)``, and that EM recognises as a finite mixture (e.g.
        :func:`ppl_lvm.models.mixtures.gaussian_mixture`, ``bernoulli_mixture``, ``poisson_mixture``).
    n_components : int, optional
        Passed as the model's argument ``K`` (the ready-made mixtures' number of components); ``None`` leaves
        ``K`` to ``model_kwargs`` or the model's default. Set it here to search over it with ``GridSearchCV``.
    model_kwargs : dict, optional
        Other arguments of the model (not the data, not ``K`` when ``n_components`` is set).
    n_init : int, default 1
        EM restarts; the one with the highest log-likelihood is kept.
    max_iter : int, default 100
        EM iterations per restart.
    tol : float or None, default 1e-3
        Convergence threshold on the change of the mean log-likelihood per sample (scikit-learn's rule);
        ``None`` runs all ``max_iter`` iterations.
    init_params : str or dict, optional
        The start: ``"k-means++"`` (the default of ``lvm.infer``), ``"kmeans"``, ``"random"``,
        ``"random_from_data"``, ``"params"``, or a dict of initial values of the model's parameters.
    reg_covar : float, optional
        Added to covariance diagonals (Gaussian emissions; default 1e-6) or the floor of probabilities.
    random_state : int, RandomState instance or None, default None
        Seed of the initialisation (restart r uses seed + r) and of :meth:`sample`. An int gives the same fit
        every time (``random_state=s`` is ``lvm.infer(..., seed=s)``); ``None`` or a ``RandomState`` draws a seed
        from numpy's global generator or from that instance at each call, as scikit-learn does.
    fit_options : dict, optional
        Further options of ``method="em"`` (``callbacks``, ``progress``, ``max_bytes``, ``online``, ...; see
        ``ppl_lvm.backends.em.EMOptions``); ``progress`` defaults to False.

    Attributes
    ----------
    result_ : EMResult
        The fit (``result_.summary()``, ``result_.standard_errors()``, ``result_.to_arviz()``, ...).
    n_features_in_ : int
        Columns of the training data.
    feature_names_in_ : ndarray of str
        Column names, when ``X`` was a DataFrame with string column names.
    converged_ : bool
        Whether EM met ``tol`` (for the kept restart).
    n_iter_ : int
        EM iterations of the kept restart.
    lower_bound_ : float
        Mean log-likelihood per sample at the last iteration's E-step (scikit-learn's ``lower_bound_``; exact EM
        has no gap between the bound and the log-likelihood).
    lower_bounds_ : ndarray
        That value at every iteration.
    weights_ : ndarray of shape (n_components,)
        Mixing weights; the other parameters of the emission family follow as ``<name>_`` (``means_``,
        ``covariances_``, ``precisions_cholesky_`` for Gaussians, ``probs_`` for Bernoulli, ``rates_`` for
        Poisson emissions).

    Raises
    ------
    UnsupportedModelError
        At ``fit``, when EM does not fit the model as a recognised mixture (a chain, the generic route).
    ValueError
        At ``fit``: bad data (NaN, infinite values, fewer rows than components), an argument given twice
        (``n_components`` and ``model_kwargs["K"]``, an option in ``fit_options`` that is a parameter here);
        at ``predict`` and the other queries: data with another number of columns.

    Notes
    -----
    Passes every check of ``sklearn.utils.estimator_checks`` that runs; ``check_array_api_input`` is skipped (it
    runs only with ``SCIPY_ARRAY_API=1``, and the estimators do not take array-API inputs: the fit runs in torch).

    See Also
    --------
    GaussianMixture : the Gaussian mixture under scikit-learn's names.

    Examples
    --------
    >>> import numpy as np
    >>> from ppl_lvm.models.mixtures import bernoulli_mixture
    >>> from ppl_lvm.sklearn import MixtureEstimator
    >>> rng = np.random.default_rng(0)
    >>> X = (rng.random((200, 6)) < np.where(np.arange(200)[:, None] < 100, 0.9, 0.1)).astype(float)
    >>> est = MixtureEstimator(bernoulli_mixture, n_components=2, n_init=2, random_state=0).fit(X)
    >>> est.predict_proba(X).shape, est.probs_.shape, est.converged_
    ((200, 2), (2, 6), True)
    """

    def __init__(
        self,
        model: Any,
        n_components: int | None = None,
        model_kwargs: dict | None = None,
        *,
        n_init: int = 1,
        max_iter: int = 100,
        tol: float | None = 1e-3,
        init_params: str | dict | None = None,
        reg_covar: float | None = None,
        random_state: Any = None,
        fit_options: dict | None = None,
    ) -> None:
        self.model = model
        self.n_components = n_components
        self.model_kwargs = model_kwargs
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.init_params = init_params
        self.reg_covar = reg_covar
        self.random_state = random_state
        self.fit_options = fit_options

    # ------------------------------------------------------------------ what fit passes to lvm.infer
    def _model(self) -> Any:
        return self.model

    def _model_arguments(self) -> dict[str, Any]:
        kwargs = dict(self.model_kwargs or {})
        if self.n_components is not None:
            if "K" in kwargs:
                raise ValueError(
                    f"the number of components is given twice: n_components={self.n_components!r} "
                    f"and model_kwargs['K']={kwargs['K']!r}; set one of them"
                )
            kwargs["K"] = self.n_components
        return kwargs

    def _options(self) -> dict[str, Any]:
        options = {"progress": False, **(self.fit_options or {})}
        own = {name: getattr(self, name) for name in _OWN_OPTIONS}
        twice = ", ".join(f"{n} -> {'random_state' if n == 'seed' else n}=" for n in options if n in own or n == "seed")
        if twice:
            raise ValueError(f"fit_options repeat parameters of the estimator ({twice}): set those instead")
        if "method" in options:
            raise ValueError("fit_options['method']: this estimator fits by exact EM (method='em'); drop 'method'")
        return {**options, **own}

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None) -> MixtureEstimator:
        """Fit the mixture to ``X`` by exact EM.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
            Present for the scikit-learn API.

        Returns
        -------
        self
        """
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        model = check_model(self._model())
        names = model.argument_names
        if not names:
            raise ValueError(f"model {model.__name__}() takes no argument; its first argument must take the data X")
        kwargs = self._model_arguments()
        if names[0] in kwargs:
            raise ValueError(
                f"model_kwargs[{names[0]!r}]: {names[0]!r} is the model's data argument, which fit(X) "
                "sets; drop it from model_kwargs"
            )
        options = self._options()
        with _float64():
            result = infer(model, {names[0]: X, **kwargs}, method="em", seed=_seed(self.random_state), **options)
        pattern = result.pattern
        if pattern is None or hasattr(pattern, "trans"):
            what = (
                "a hidden Markov chain"
                if pattern is not None
                else "not a recognised finite mixture (EM ran its generic route)"
            )
            raise UnsupportedModelError(
                f"{type(self).__name__} scores new rows with the closed-form mixture kernels, but model "
                f"{model.__name__}() is {what}; fit it with lvm.infer(model, data, method='em') and query the result"
            )
        self.result_ = result
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        self.lower_bounds_ = np.asarray(result.history, dtype=np.float64)
        self.lower_bound_ = float(self.lower_bounds_[-1])
        params = pattern.family.complete_params(pattern.to_kernel(result.params))
        for name, value in params.items():
            setattr(self, f"{name}_", _numpy(value))
        return self

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit, then the most probable component of every row of ``X``: ``fit(X).predict(X)``."""
        return self.fit(X, y).predict(X)

    # ------------------------------------------------------------------ queries
    def _checked(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "result_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return torch.from_numpy(X)

    def score_samples(self, X: Any) -> np.ndarray:
        """log p(x_i) of every row under the fitted mixture (the components summed out), shape ``(n_samples,)``."""
        x = self._checked(X)
        with _float64():
            return _numpy(self.result_.score_samples(x))

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per sample of ``X`` (scikit-learn's ``GaussianMixture.score``; higher is better)."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X: Any) -> np.ndarray:
        """Posterior component probabilities p(z_i = k | x_i), shape ``(n_samples, n_components)``."""
        x = self._checked(X)
        with _float64():
            return _numpy(self.result_.predict_proba(x))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable component of every row, shape ``(n_samples,)`` (int64)."""
        return self.predict_proba(X).argmax(axis=1).astype(np.int64)

    def n_parameters(self) -> int:
        """Free parameters of the fitted mixture, as BIC and AIC count them (scikit-learn's convention)."""
        check_is_fitted(self, "result_")
        return int(self.result_.n_parameters)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on ``X``: ``-2 log L(X) + p log n`` (lower is better)."""
        n = len(X)
        return float(-2.0 * self.score(X) * n + self.n_parameters() * np.log(n))

    def aic(self, X: Any) -> float:
        """Akaike information criterion on ``X``: ``-2 log L(X) + 2 p`` (lower is better)."""
        return float(-2.0 * self.score(X) * len(X) + 2.0 * self.n_parameters())

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` new rows from the fitted mixture.

        The seed comes from ``random_state`` (an int gives the same draws at every call).

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            The component of every row (int64), in draw order.
        """
        check_is_fitted(self, "result_")
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        with _float64():
            x, components = self.result_.sample(int(n_samples), seed=_seed(self.random_state))
        return _numpy(x).reshape(int(n_samples), -1), _numpy(components).astype(np.int64)


class GaussianMixture(MixtureEstimator):
    """A Gaussian mixture fitted by exact EM, with scikit-learn's ``GaussianMixture`` names.

    The model is :func:`ppl_lvm.models.mixtures.gaussian_mixture`; from the same start (``init_params`` as a
    dict of the model's parameters ``weights``, ``locs`` and ``scale_trils`` / ``scale_tril`` / ``scales``) the
    fit equals scikit-learn's to ~1e-6. The default start is k-means++ seeding (``lvm.infer``'s), not
    scikit-learn's k-means, so fits from the default start differ from scikit-learn's.

    Parameters
    ----------
    n_components : int, default 1
    covariance_type : {"full", "diag", "spherical", "tied"}, default "full"
    n_init, max_iter, tol, init_params, reg_covar, random_state, fit_options
        As in :class:`MixtureEstimator`.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_cholesky_, precisions_ : ndarray
        scikit-learn's shapes for the covariance type.
    result_, n_features_in_, converged_, n_iter_, lower_bound_, lower_bounds_
        As in :class:`MixtureEstimator`.

    Examples
    --------
    >>> import numpy as np
    >>> from ppl_lvm.sklearn import GaussianMixture
    >>> X = np.vstack([np.random.default_rng(0).normal(size=(50, 2)) + c for c in (-4, 4)])
    >>> gm = GaussianMixture(n_components=2, covariance_type="diag", random_state=0).fit(X)
    >>> sorted(np.round(gm.means_[:, 0]).tolist()), gm.predict(X[:3]).shape
    ([-4.0, 4.0], (3,))
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        n_init: int = 1,
        max_iter: int = 100,
        tol: float | None = 1e-3,
        init_params: str | dict | None = None,
        reg_covar: float | None = None,
        random_state: Any = None,
        fit_options: dict | None = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.init_params = init_params
        self.reg_covar = reg_covar
        self.random_state = random_state
        self.fit_options = fit_options

    def _model(self) -> Any:
        return gaussian_mixture

    def _model_arguments(self) -> dict[str, Any]:
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}")
        return {"K": self.n_components, "covariance_type": self.covariance_type}

    def fit(self, X: Any, y: Any = None) -> GaussianMixture:
        super().fit(X, y)
        pc = self.precisions_cholesky_
        if self.covariance_type in ("full", "tied"):
            self.precisions_ = pc @ np.swapaxes(pc, -1, -2)
        else:
            self.precisions_ = pc**2
        return self

    fit.__doc__ = MixtureEstimator.fit.__doc__
