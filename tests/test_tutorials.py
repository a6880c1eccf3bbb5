"""Every tutorial runs end to end in fast mode (PPL_LVM_FAST=1), in a subprocess, in under 60 s.

Each test checks the exit code and that the key numbers the tutorial's text talks about are printed.
Warnings are errors, as in the rest of the suite. Figures go to a temporary directory (PPL_LVM_FIGURES), never into the repository.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
TIMEOUT = 900.0  # a hung tutorial fails instead of stalling the suite; speed is not tested here

# tutorial file -> regular expressions that must all appear in its output (every tutorial in tutorials/ is run;
# one not listed here is checked for its exit code and time only)
EXPECTED = {
    "01_maximum_likelihood.py": [
        r"float64 product of 1000 densities  = 0\.0\n",
        r"sum of the 1000 log-densities      = -1818\.7496",
        r"the running product first becomes 0\.0 after 410 points",
        r"closed form: mu_hat = 2\.008098, sigma_hat = 1\.491473, log-likelihood = -1818\.7026",
        r"lvm\.infer: mu = 2\.0\d+, sigma = 1\.49\d+",
    ],
    "02_gaussian_mixtures_and_em.py": [
        r"every step increased the log-likelihood: True",
        r"largest difference to the hand-written history over 138 iterations: \d\.\d+e-1[3-6]",
        r"history is monotone: True",
        r"scikit-learn from the same start: 138 iterations, log-likelihood -1255\.3405",
        r"EM from k-means\+\+: 18 iterations .* log-likelihood -1255\.3405",
        r"random_from_data with n_init=10: -180\.1855",
        r"BIC picks K = 2 \(scikit-learn: 2\)",
    ],
    "03_the_elbo.py": [
        r"exact posterior: ELBO = -1255\.340465, KL = 0\.000000",
        r"ELBO \+ KL - log p\(x\): largest \|difference\| = \d\.\d+e-1[0-6]",
        r"EM as coordinate ascent: ELBO never decreased: True",
    ],
    "04_variational_inference.py": [
        r"exact posterior: mean = \[0\.3735, -0\.0371\], sd = \[0\.4502, 0\.4333\], correlation = -0\.9338",
        r"optimal mean-field sd = \[0\.1611, 0\.1551\] \(ratio to the exact sd: 0\.358\), its ELBO gap = 1\.0275 nats",
        r"guide='normal' +mean = .*sd = \[0\.1[5-6]\d\d, 0\.1[5-6]\d\d\], correlation = -0\.0041",
        r"exact gradient: +dL/dm_1 = +12\.999 +dL/dm_2 = +12\.415 +dL/dlog s_1 = +-8\.628 +dL/dlog s_2 = +-9\.395",
        r"variance ratio score function / reparameterisation: 25, 24, 39, 39 \(over 20000",
        r"Pyro: variance ratio score function / reparameterisation: [12]\d, [12]\d, [123]\d, [123]\d",
        r"held-out set: exact log p\(x\) = -2920\.58, amortised ELBO with no further fitting = -292[01]\.\d\d",
    ],
    "05_vae_on_digits.py": [
        r"training \(1437, 64\), held out \(360, 64\), fraction of pixels on: 0\.293",
        r"held-out  ELBO per digit = -2\d\.\d{3} nats",
        r"independent pixels with their training frequencies: -24\.581 nats",
        r"first 50 losses, ready-made vs hand-written: largest difference 0 nats",
        r"importance-weighted estimate of log p\(x\) with K = 50: -2\d\.\d{3}",
        r"5-nearest-neighbour digit accuracy from the 2-D codes of held-out digits: 0\.\d{3}",
    ],
    "06_iwae.py": [
        r"posterior correlation of \(z_1, z_2\): -0\.8149",
        r"exact log p\(x\) per point: -4\.3682; best diagonal q: ELBO = log p\(x\) - 0\.5455 = -4\.9138",
        r"IWAE_1000  per point = -4\.4276   gap to log p\(x\) = 0\.0593",
        r"IWAE_K rises with K: True; every rung below log p\(x\): True; Monte Carlo ELBO - closed form = -0\.0[0-4]\d\d",
        r"1 layer  VAE        k=1 : \d+ epochs in +\d+ s \(\d+ s CPU\); held-out log p\(x\) \(IWAE_\d+\) = -\d+\.\d{3}; active units z \d+ of 16",
        r"1 layer  IWAE       k=5 : \d+ epochs in +\d+ s \(\d+ s CPU\); held-out log p\(x\) \(IWAE_\d+\) = -\d+\.\d{3}; active units z \d+ of 16",
        r"2 layers IWAE, DReG k=50: \d+ epochs in +\d+ s \(\d+ s CPU\); held-out .* active units z2 \d+ of 8, z1 \d+ of 16",
        r"\| IWAE \| 50 \| -\d+\.\d{3} \| -\d+\.\d{3} \|",
        r"IWAE beats VAE at k = 5 and 50 in each depth: (True|False); best entry: .*, k = \d+, [12] layers? \(-\d+\.\d{3}\)",
        r"IWAE_5-trained minus ELBO-trained \(one layer\), held-out log-likelihood: [+-]\d\.\d{3} nats per image",
        r"diagnose \(ELBO-trained, training set\): IWAE_100 +-\d+\.\d",
        r"diagnose \(two layers, IWAE_50-trained\): Pareto k-hat \d+\.\d\d \(per point, the largest of 1437\)",
    ],
    "07_posterior_collapse.py": [
        r"ordinary decoder, ELBO +active units 8 of 8",
        r"strong decoder, beta = 4 +active units 0 of 8, total KL +0\.0\d\d nats",
        r"strong decoder, free bits +active units 8 of 8",
        r"warning: posterior collapse: the local latent 'z' has 0 active units of 8",
        r"strong decoder, free bits +KL per dimension:( +0\.[4-6]\d){8}",
    ],
    "08_hidden_markov_models.py": [
        r"log-likelihood never decreased: True",
        r"lvm\.infer\(method='em'\): \d+ iterations, log-likelihood -1438\.400\d",
        r"hmmlearn GaussianHMM: +\d+ iterations, log-likelihood -1438\.400\d",
        r"\|difference in log-likelihood\| = \d\.\d\de-(0[6-9]|1\d)",
        r"Viterbi paths: lvm and hmmlearn agree on 1\.0000 of 1020 time steps",
        r"Viterbi accuracy vs the true regimes: 0\.8853",
    ],
    "09_discrete_latents.py": [
        r"exact gradient: \[-0\.2528 +0\.2077 +-0\.4522 +0\.4973\]",
        r"score function, b = E\[f\] +\|mean - exact\| = 0\.0\d+ \(Monte Carlo se 0\.0\d+\)",
        r"random decoder: held-out log p\(x\) = -44\.3\d\d nats per digit",
        r"enumeration +held-out log p\(x\) = -\d\d\.\d{3} nats per digit",
        r"Gumbel-softmax +held-out log p\(x\) = -\d\d\.\d{3} nats per digit",
        r"score function, average baseline +score-function sites \['c'\], baseline average",
        r"score function, net baseline +score-function sites \['c'\], baseline net",
        r"Gumbel-softmax +score-function sites \[\], baseline None",
    ],
    "10_monte_carlo_and_variational_em.py": [
        r"closed-form maximum of the PPCA log-likelihood: -2213\.81",
        r"vem: log-likelihood -221\d\.\d\d \(\d\.\d\d nats, relative \d\.\de-0[34] below the maximum\)",
        r"mcem: log-likelihood -221\d\.\d\d \(\d\.\d\d nats, relative \d\.\de-0[34] below the maximum\)",
        r"closed form: tau\^2 = 0\.9351, sigma\^2 = 0\.4795, mu = 2\.1153",
        r"vem: tau\^2 = 0\.9\d+ \([-+][0-4]\.\d\d%\), sigma\^2 = 0\.4\d+ \([-+][0-4]\.\d\d%\)",
        r"mcem: tau\^2 = 0\.9\d+ \([-+][0-4]\.\d\d%\), sigma\^2 = 0\.4\d+ \([-+][0-4]\.\d\d%\)",
        r"mcem \(prior proposal\): tau\^2 = 0\.9\d+ \([-+][0-4]\.\d\d%\), sigma\^2 = 0\.4\d+ \([-+][0-4]\.\d\d%\)",
        r"mcem \(nuts proposal\), \d+ iterations: tau\^2 = 0\.9\d+ \([-+][0-4]\.\d\d%\), sigma\^2 = 0\.4\d+ "
        r"\([-+][0-4]\.\d\d%\)",
    ],
    "11_vi_vs_nuts.py": [
        r"closed form: mean = \[ 1\.5051 -1\.0373\], sd = \[0\.5062 0\.4839\], correlation = -0\.9637",
        r"optimal mean-field sd = \[0\.1351 0\.1292\], ratio to the exact sd 0\.2669",
        r"reported sd ratio mean-field / NUTS = \[0\.[1-3]\d* +0\.[1-3]\d*\] \(closed form 0\.267\)",
        r"NUTS mass inside mean-field's 90% interval: mu 0\.\d{3}, tau 0\.\d{3}, theta_j 0\.\d{3} to [01]\.\d{3}",
        r"sd ratio mean-field / NUTS: mu \d\.\d{3}, tau 0\.\d{3}",
    ],
}


# fast mode cuts every fit short on purpose: a gradient fit's ConvergenceWarning there is expected, not a failure
QUIET = [arg for m in ("svi", "meanfield", "iwae", "renyi") for arg in ("-W", f"ignore:{m} stopped after")]


@pytest.mark.parametrize("name", sorted(p.name for p in TUTORIALS.glob("[0-9][0-9]_*.py")))
def test_tutorial_runs_in_fast_mode(name, tmp_path):
    env = dict(os.environ, PPL_LVM_FAST="1", PYTHONPATH=str(ROOT), MPLBACKEND="Agg",
               PPL_LVM_FIGURES=str(tmp_path / "figures"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-W", "error", *QUIET, str(TUTORIALS / name)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    print(f"{name}: {elapsed:.1f} s in fast mode")  # reported, never asserted: the time depends on the machine's load
    for pattern in EXPECTED.get(name, []):
        assert re.search(pattern, proc.stdout), f"{name}: no match for {pattern!r} in\n{proc.stdout}"
    if name in EXPECTED:  # these save their figures where PPL_LVM_FIGURES says, also in fast mode
        assert list((tmp_path / "figures").glob("*.png")), f"{name} saved no figure to PPL_LVM_FIGURES"
