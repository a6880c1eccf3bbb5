"""Exact EM for hidden Markov models: forward-backward, Viterbi, M-steps, loop.

Data layout follows hmmlearn: all sequences concatenated along the first axis
plus ``lengths``.  Internally sequences are padded to a (B, T, K) batch; padded
steps get log-emission 0, so they multiply the forward messages by a
row-stochastic matrix and leave every likelihood unchanged.

Forward-backward avoids a Python loop over T (each tiny torch op costs
microseconds, so T ~ 1000 sequential steps would dominate).  The time axis is
cut into chunks of length ``C ~ sqrt(2T/3)`` and, for all chunks at once,

1. the transfer-matrix product of every chunk is formed (C steps; right
   multiplication by the shared transition matrix is one GEMM per step),
2. messages are passed between chunk boundaries (T / C steps, log space),
3. the ordinary scaled forward / backward recursions run inside every chunk
   from those boundary messages (C steps each).

The default ("scaled") variant works in probability space with per-step
normalisation, like hmmlearn's ``implementation="scaling"``, and gets the
expected transition counts from one (K, n) @ (n, K) GEMM.  It is used when every
transition probability is >= 1e-100 and no emission log-ratio exceeds 700 nats
(where scaled messages cannot lose relevant mass); otherwise, or if an
underflow is detected, an exact log-space version of the chunked scan (or, for
very large state spaces, a plain log-space time loop) is used.

Parameter dict: ``"startprob"`` (K,) is the distribution of the *first hidden
state* (hmmlearn's ``startprob_``), ``"transmat"`` (K, K) with rows summing to
1, plus the emission family's entries.
"""

from .estep import HMMEStep, hmm_e_step, hmm_log_likelihood
from .fit import HMMFitResult, chain_source, fit_hmm, hmm_n_parameters, transitions_m_step
from .forward_backward import forward_backward
from .viterbi import viterbi

__all__ = [
    "HMMEStep",
    "HMMFitResult",
    "chain_source",
    "fit_hmm",
    "forward_backward",
    "hmm_e_step",
    "hmm_log_likelihood",
    "hmm_n_parameters",
    "transitions_m_step",
    "viterbi",
]
