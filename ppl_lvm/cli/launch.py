"""``ppl-lvm fit`` started by ``torchrun``: the process group, each rank's rows of the data file, and the outputs.

``torchrun --nproc-per-node N -m ppl_lvm fit ...`` starts N copies of the command with ``RANK``, ``WORLD_SIZE`` and
the rendezvous address in their environment. Each copy joins the process group (gloo; NCCL with a CUDA
``device``), reads only its contiguous range of the data rows (:func:`~ppl_lvm.em.stream.shard_range`) and fits with
``distributed=True``. Only rank 0 prints and writes the fit folder; its per-row outputs (netCDF, report,
responsibilities) are those of all the rows, as one process would write them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..collective import collective
from ..data import bind_data
from .inputs import CLIError

__all__ = ["Launch", "from_environment"]


@dataclass
class Launch:
    """Where this copy of the command stands: its rank among ``world_size`` copies (1: no torchrun)."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def shard(self) -> tuple[int, int] | None:
        return (self.rank, self.world_size) if self.distributed else None

    def start(self, options: dict[str, Any]) -> None:
        """Join the process group (once) and ask the fit to run data-parallel."""
        if not self.distributed:
            return
        if options.get("distributed", True) is not True:
            raise CLIError("under torchrun every rank fits its part of the rows together with the others; drop "
                           "--option distributed=False, or run the command without torchrun")
        options["distributed"] = True
        if not dist.is_initialized():
            device = str(options.get("device") or "cpu")
            cuda = device.startswith("cuda") and torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if cuda else "gloo")

    def together(self, what: str) -> Any:
        """A block that fails on every rank when it fails on one (nothing to share in one process)."""
        return collective(what) if self.distributed else contextlib.nullcontext()

    def stop(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def complete(self, result: Any, model: Any, full_data: Callable[[], Any]) -> None:
        """On rank 0, make the result describe all the rows: their data (``full_data()``, read by rank 0 only), and
        for EM every rank's responsibilities and per-point log-likelihoods (gathered from the ranks: a collective
        call, every rank makes it)."""
        if not self.distributed:
            return
        rows = {name: getattr(result, name, None) for name in ("responsibilities", "log_likelihood_per_point")}
        if rows["responsibilities"] is not None:  # the tensors (a result may recompute them on access)
            rows["responsibilities"] = dict(rows["responsibilities"])
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, {k: v for k, v in rows.items() if v is not None and len(v) > 0})
        if self.rank != 0:
            return
        if gathered[0].get("responsibilities"):
            result.responsibilities = {k: torch.cat([g["responsibilities"][k] for g in gathered])
                                       for k in gathered[0]["responsibilities"]}
        if gathered[0].get("log_likelihood_per_point") is not None:
            result.log_likelihood_per_point = torch.cat([g["log_likelihood_per_point"] for g in gathered])
        bound = bind_data(model, full_data())
        for name, value in result.data.kwargs.items():  # the fit's conversions (integers to floats, ...)
            mine = bound.kwargs.get(name)
            if isinstance(value, torch.Tensor) and isinstance(mine, torch.Tensor):
                bound.kwargs[name] = mine.to(value.dtype)
        result.data = bound
        result.structure = model.inspect(**bound.kwargs)  # the plate sizes of all the rows


def from_environment() -> Launch:
    """The rank and world size torchrun (or torch.distributed.launch, Ray, TorchDistributor) put in the environment."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return Launch()
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except ValueError as exc:
        raise CLIError(f"RANK={os.environ['RANK']!r} and WORLD_SIZE={os.environ['WORLD_SIZE']!r} must be integers "
                       "(set by torchrun)") from exc
    if world < 1 or not 0 <= rank < world:
        raise CLIError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return Launch(rank, world)
