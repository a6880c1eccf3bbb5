"""Running a test's worker on 2 processes (torch.distributed, gloo on loopback), bounded in time: the one harness of
the data-parallel tests."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import pytest
import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker: Callable, folder: str, timeout_s: float, world: int = 2) -> list:
    """Start ``worker(rank, world, port, folder)`` on ``world`` spawned processes, fail the test when they have
    not finished after ``timeout_s`` seconds (a hang guard), and return what each rank saved to
    ``folder/rank{r}.pt``."""
    context = mp.start_processes(worker, args=(world, free_port(), folder), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {world} ranks did not finish in {timeout_s} s")
    return [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=False) for r in range(world)]
