"""How many threads torch computes a fit with: the work size decides, the cores the process may use cap it, and a
count the user chose wins.

torch starts with one intra-op thread per core it finds and uses them for every operation on a large enough tensor.
A fit whose steps are small (a VAE on minibatches of 100, a mixture of a few thousand rows) gains nothing from a
second thread and loses a lot when the other core is busy: each operation then waits for a thread that is not
running (measured in ``bench/RESULTS.md``, section "Threads"). A large step (an E-step over millions of rows) gains
from every free core. :func:`ppl_lvm.infer` therefore sets torch's thread count around each fit by this rule
(``num_threads="auto"``, the default) and restores the previous count afterwards, also when the fit fails:

1. **The user's count wins.** If ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set in the environment (torch reads
   them at start-up; ``torchrun`` sets ``OMP_NUM_THREADS=1`` for several processes per node), or
   ``torch.set_num_threads`` has been called (the count differs from :data:`STARTUP_THREADS`, the count found when
   ppl_lvm was imported, or that count is not one torch picks by itself: the cores or physical cores this process
   may use), the count is left as it is. A ``torch.set_num_threads(n)`` before ``import ppl_lvm`` with ``n``
   equal to torch's own choice cannot be told apart from it: pass ``num_threads=n`` to the fit instead.
2. **The work size decides.** :func:`work_size` estimates the arithmetic of one step (one EM iteration) from what
   the fit knows before it starts; the fit runs ``work // WORK_PER_THREAD`` threads, at least one.
3. **Never more than the free cores.** At most the cores this process may run on (``os.sched_getaffinity``),
   divided among the processes of a data-parallel fit on this machine (``LOCAL_WORLD_SIZE``, set by ``torchrun``;
   else the world size of an initialised ``torch.distributed`` group), and, when more than one thread would run,
   at most the cores that were idle over 0.1 s before the fit (:func:`idle_cores`, Linux's ``/proc/stat``): a
   thread on a core another process keeps busy stalls every operation of the fit.

``num_threads=n`` (a positive integer) runs the fit with ``n`` threads whatever the rule says; ``num_threads=None``
leaves torch's count untouched. The fit records the count it ran with in ``result.options["num_threads"]`` and
why in ``result.options["num_threads_reason"]``. Only torch's intra-op pool is set; numpy's and scipy's BLAS pools
(``threadpoolctl``) are not touched.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["ENV_VARS", "STARTUP_THREADS", "WORK_PER_THREAD", "ThreadChoice", "choose_threads", "idle_cores",
           "local_ranks", "thread_scope", "usable_cores", "user_setting", "validate_num_threads", "work_size"]

#: torch's intra-op thread count when ppl_lvm was imported (before ppl_lvm sets it for any fit)
STARTUP_THREADS: int = torch.get_num_threads()

#: the environment variables through which torch takes a thread count at start-up
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

#: the work (:func:`work_size`) per thread: below twice this a fit runs one thread. Measured on 2 cores
#: (bench/RESULTS.md, "Threads"): the tutorial VAE (2.7e6 per step) gains 2% from a second thread on a free core
#: and runs 11-20x slower with it beside a busy one; a diagonal GMM EM iteration over 2e5 rows (1.1e7) 2.3-2.7x
#: slower and over 2e6 rows (1.1e8) 8-14x slower beside busy cores. More threads are given only where a
#: one-thread step takes about 0.25 s or more (2e6 rows: 1.4-2.5 s) and only on idle cores (:func:`idle_cores`).
WORK_PER_THREAD = 2.5e7

_scope = threading.local()


def usable_cores() -> set[int]:
    """The CPUs this process may run on (``os.sched_getaffinity``; all of ``os.cpu_count()`` where the platform has
    no affinity)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int]) -> int:
    """The physical cores among ``cpus`` (hyper-threads of one core counted once), from Linux's CPU topology; the
    number of ``cpus`` where it cannot be read."""
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "physical_package_id") as package, open(base + "core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


def local_ranks(environ: Mapping[str, str] | None = None) -> int:
    """The processes of a data-parallel fit on this machine: ``LOCAL_WORLD_SIZE`` (``torchrun`` sets it), else the
    world size of an initialised ``torch.distributed`` process group (every rank assumed local), else 1."""
    environ = os.environ if environ is None else environ
    value = environ.get("LOCAL_WORLD_SIZE", "")
    if value.strip().isdigit() and int(value) > 0:
        return int(value)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return max(1, torch.distributed.get_world_size())
    return 1


def _cpu_times(cpus: set[int]) -> dict[int, tuple[int, int]] | None:
    """(idle, total) jiffies of each of ``cpus`` from ``/proc/stat``; ``None`` where it cannot be read."""
    times = {}
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                name, *values = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    counts = [int(v) for v in values[:8]]
                    times[int(name[3:])] = (counts[3] + counts[4], sum(counts))  # idle + iowait, all
    except (OSError, ValueError, IndexError):
        return None
    return times if len(times) == len(cpus) else None


def idle_cores(cpus: set[int], interval: float = 0.1) -> float | None:
    """How many of ``cpus`` were idle over the next ``interval`` seconds (this process sleeps meanwhile, so its own
    core counts as idle); ``None`` where ``/proc/stat`` cannot be read (not Linux)."""
    before = _cpu_times(cpus)
    if before is None:
        return None
    time.sleep(interval)
    after = _cpu_times(cpus)
    if after is None:
        return None
    idle = 0.0
    for cpu, (idle0, total0) in before.items():
        total = after[cpu][1] - total0
        idle += (after[cpu][0] - idle0) / total if total > 0 else 1.0
    return idle


def _defaults(cpus: set[int]) -> set[int]:
    """The counts torch picks by itself on ``cpus``: one per CPU (OpenMP) or one per physical core (MKL)."""
    return {len(cpus), physical_cores(cpus)}


#: whether :data:`STARTUP_THREADS` is a count torch picked by itself (else it was set before ppl_lvm was imported)
_STARTUP_IS_DEFAULT: bool = STARTUP_THREADS in _defaults(usable_cores())


def user_setting(current: int | None = None, environ: Mapping[str, str] | None = None,
                 startup: int | None = None, startup_is_default: bool | None = None) -> str | None:
    """How the user set torch's thread count, or ``None`` if it is still the count torch picked at start-up.

    Parameters
    ----------
    current : int, optional
        The count now (default ``torch.get_num_threads()``).
    environ : mapping, optional
        The environment (default ``os.environ``).
    startup, startup_is_default : optional
        The count at the import of ppl_lvm and whether torch picked it itself (default :data:`STARTUP_THREADS`
        and the check made then).
    """
    current = torch.get_num_threads() if current is None else current
    environ = os.environ if environ is None else environ
    startup = STARTUP_THREADS if startup is None else startup
    startup_is_default = _STARTUP_IS_DEFAULT if startup_is_default is None else startup_is_default
    for name in ENV_VARS:
        if environ.get(name, "").strip():
            return f"{name}={environ[name].strip()} is set"
    if current != startup:
        return f"torch.set_num_threads({current}) was called"
    if not startup_is_default:
        return f"torch.set_num_threads({current}) was called before ppl_lvm was imported"
    return None


def work_size(rows: int, parameters: int, particles: int = 1, sites: int = 1) -> int:
    """The arithmetic of one step, in multiply-adds, roughly: rows x parameter values x particles x observed sites.

    Parameters
    ----------
    rows : int
        Data points one step computes on: the minibatch (``batch_size``) or every row of the data plate (for EM
        from data read chunk by chunk: a chunk).
    parameters : int
        Values of the model's parameters (``lvm.param`` and ``lvm.module`` weights) as the prototype run found them;
        a network applied to every row costs about this many multiply-adds per row, and a mixture's or a chain's
        parameters grow with its components or states as its E-step does.
    particles : int
        Monte Carlo particles (importance samples) per step.
    sites : int
        Observed sites in the data plate: a chain written step by step has one per step, each computed over all
        the rows (a vectorised sequence site counts once: its steps are not seen).
    """
    return int(max(rows, 1)) * int(max(parameters, 1)) * int(max(particles, 1)) * int(max(sites, 1))


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a fit runs with (``None``: torch's count left untouched) and why."""

    threads: int | None
    reason: str


def validate_num_threads(value: Any) -> None:
    """Refuse a ``num_threads`` that is not ``"auto"``, ``None`` or a positive integer (``ValueError``)."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"num_threads must be 'auto' (the work size decides, see ppl_lvm.threads), None (torch's "
                         f"count left as it is) or a positive integer, got {value!r}")


def choose_threads(num_threads: Any, work: int, *, current: int | None = None,
                   environ: Mapping[str, str] | None = None, cores: int | None = None, ranks: int | None = None,
                   idle: float | None = None, startup: int | None = None,
                   startup_is_default: bool | None = None) -> ThreadChoice:
    """The thread count of a fit of ``work`` (:func:`work_size`) by the rule of this module.

    Parameters
    ----------
    num_threads : "auto", None or int
        The fit's option: ``"auto"`` applies the rule, an integer is used as given, ``None`` leaves torch alone.
    work : int
        The work of one step.
    current, environ, startup, startup_is_default
        As in :func:`user_setting`.
    cores, ranks : int, optional
        The CPUs this process may use (default ``len(usable_cores())``) and the processes sharing them (default
        :func:`local_ranks`).
    idle : float, optional
        The idle cores among them (default :func:`idle_cores`, measured only when more than one thread would run).
    """
    validate_num_threads(num_threads)
    current = torch.get_num_threads() if current is None else current
    if num_threads is None:
        return ThreadChoice(None, f"num_threads=None: torch's count ({current}) left as it is")
    if num_threads != "auto":
        return ThreadChoice(int(num_threads), f"num_threads={int(num_threads)} given")
    if getattr(_scope, "depth", 0):
        return ThreadChoice(current, "a fit inside another fit keeps its count")
    user = user_setting(current, environ, startup, startup_is_default)
    if user is not None:
        return ThreadChoice(current, f"{user}: the user's count is kept")
    cpus = usable_cores() if cores is None else None
    cores = len(cpus) if cpus is not None else cores
    ranks = local_ranks(environ) if ranks is None else ranks
    share = max(1, cores // max(1, ranks))
    threads = min(share, max(1, int(work // WORK_PER_THREAD)))
    reason = f"auto: work {work:.1e} per step ({WORK_PER_THREAD:.1e} per thread), {cores} usable cores"
    if ranks > 1:
        reason += f" shared by {ranks} local processes"
    if threads > 1:
        if idle is None and cpus is not None:
            idle = idle_cores(cpus)
        if idle is not None:
            free = max(1, int(idle / max(1, ranks) + 0.5))
            reason += f", {idle:.1f} idle"
            threads = min(threads, free)
    return ThreadChoice(threads, reason)


@contextmanager
def thread_scope(choice: ThreadChoice) -> Iterator[ThreadChoice]:
    """Run the block with ``choice.threads`` torch threads and restore the count found on entry on exit (also
    after an exception); ``threads=None`` changes nothing. Fits nested in the block keep its count."""
    before = torch.get_num_threads()
    if choice.threads is not None and choice.threads != before:
        torch.set_num_threads(choice.threads)
    _scope.depth = getattr(_scope, "depth", 0) + 1
    try:
        yield choice
    finally:
        _scope.depth -= 1
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
