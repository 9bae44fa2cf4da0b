"""The machine's GPUs and their free memory, without torch: NVML, else nvidia-smi, else none."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_gb: float
    free_gb: float

    @property
    def label(self) -> str:
        return f"GPU {self.index}: {self.name}, {self.free_gb:.1f} of {self.total_gb:.1f} GB free"


def _from_nvml() -> list[Gpu] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(
                Gpu(
                    index,
                    name.decode() if isinstance(name, bytes) else name,
                    memory.total / 1024**3,
                    memory.free / 1024**3,
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _from_nvidia_smi() -> list[Gpu] | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        output = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=index,name,memory.total,memory.free",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in output.strip().splitlines():
        index, name, total, free = (part.strip() for part in line.split(","))
        gpus.append(Gpu(int(index), name, float(total) / 1024, float(free) / 1024))
    return gpus


# Free memory moves slowly next to how often the page asks (building it asks several times,
# a run view once a second): one answer serves every caller for this long.
MAX_AGE_SECONDS = 1.0
_last: tuple[float, list[Gpu]] | None = None


def list_gpus() -> list[Gpu]:
    """This machine's NVIDIA GPUs; an empty list means training runs on the CPU."""
    global _last
    now = time.monotonic()
    if _last is not None and now - _last[0] < MAX_AGE_SECONDS:
        return list(_last[1])
    gpus: list[Gpu] = []
    for source in (_from_nvml, _from_nvidia_smi):
        found = source()
        if found is not None:
            gpus = found
            break
    _last = (now, gpus)
    return list(gpus)
