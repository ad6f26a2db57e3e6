"""Which process of a launch speaks for the run.

Launchers describe a process in its environment: torchrun and `accelerate launch --multi_gpu` set
`WORLD_SIZE`, `RANK`, `LOCAL_RANK` and `LOCAL_WORLD_SIZE`; MPI sets its own names. What a run prints
about itself (`train examples:`, `saved to`) is said once, by global rank 0.
"""

from __future__ import annotations

import os

WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def _first_int(names: tuple[str, ...], default: int) -> int:
    return next((int(os.environ[name]) for name in names if os.environ.get(name)), default)


def world_size() -> int:
    """Processes the launcher started in all (1 without a launcher)."""
    return _first_int(WORLD_SIZE_VARIABLES, 1)


def local_world_size() -> int | None:
    """Processes the launcher started on this machine, when it says (torchrun and MPI do)."""
    local = _first_int(("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"), 0)
    return local or None


def is_main_process() -> bool:
    """True for global rank 0, and for a process that no launcher started."""
    return _first_int(RANK_VARIABLES, 0) == 0


def say(line: str) -> None:
    """Print a line about the run from global rank 0 only."""
    if is_main_process():
        print(line, flush=True)
