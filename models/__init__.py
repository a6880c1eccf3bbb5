"""Ready-made latent variable models, written in the ppl_lvm DSL (importable as ``ppl_lvm.models``)."""
