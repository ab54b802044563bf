"""Which process of a multi-process launch this is: the main one alone writes files and prints results."""

from __future__ import annotations


def is_main_process() -> bool:
    """Rank 0 of a multi-process launch (accelerate launch, torchrun, mpirun), or a single process. Read
    from the launcher's environment: it is needed before the trainer sets up the process group."""
    from accelerate.utils import get_int_from_env

    return get_int_from_env(["RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"], 0) == 0
