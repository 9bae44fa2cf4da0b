"""Memory figures for the reference's stage table: GPU memory on CUDA, process memory on the CPU."""

from __future__ import annotations

import resource

import torch

GB = 1024**3


def memory_snapshot(device: torch.device) -> dict[str, float]:
    """On CUDA: `memory_allocated` and `max_memory_reserved` in GB, as the reference reports them.

    On the CPU: the process's resident and peak resident memory in GB.
    """
    if device.type == "cuda":
        return {
            "memory_allocated": round(torch.cuda.memory_allocated(device) / GB, 3),
            "max_memory_reserved": round(torch.cuda.max_memory_reserved(device) / GB, 3),
        }
    import psutil

    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "rss": round(psutil.Process().memory_info().rss / GB, 3),
        "peak_rss": round(peak_kib * 1024 / GB, 3),
    }


def free_accelerator_memory(device: torch.device) -> None:
    """Return cached blocks to the driver after big objects are dropped."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
