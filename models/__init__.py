"""Ready-made latent variable models, written in the ppl_lvm DSL (importable as ``ppl_lvm.models``).

=====================  ==========================================================================================
module                 models
=====================  ==========================================================================================
``mixtures``           Gaussian (full, diag, spherical, tied covariance), Bernoulli and Poisson mixtures (EM or SVI)
``hmm``                Gaussian and categorical HMMs over sequences of different lengths (Baum-Welch EM or SVI)
``factor``             probabilistic PCA and factor analysis (SVI), their closed-form marginals and MLEs
``regression``         a mixture of linear regressions (exact generic EM or SVI)
``topic``              ProdLDA, an amortised neural topic model, and a simulator of corpora with known topics
``vae``                a variational autoencoder (amortised SVI / IWAE)
``vae_deep``           a VAE with two stochastic layers, x <- z1 <- z2 (SVI, IWAE with DReG, mean-field)
``vae_categorical``    a VAE with one-hot categorical codes (enumeration, score function or Gumbel-softmax)
``sbn``                a sigmoid belief network: binary latents, an amortised Bernoulli guide (score function)
=====================  ==========================================================================================

Every model's docstring has a runnable example, and its parameters are recovered from data simulated from the model
itself in the tests (``tests/test_models_*.py``).
"""
