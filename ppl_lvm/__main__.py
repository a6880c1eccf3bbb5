"""``python -m ppl_lvm``: the ``ppl-lvm`` command line (see :mod:`ppl_lvm.cli`)."""

from .cli import entry_point

if __name__ == "__main__":
    entry_point()
