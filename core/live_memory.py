"""Live tensor memory per device, counted from the storages that torch's operators create.

`LiveMemoryTracker` is a `TorchDispatchMode`: every operator's outputs pass through it, it notes
each storage it has not seen (its bytes, its device) and a weak reference tells it when the
storage is freed. So it counts what is alive at every moment, and the peak since the last
`reset_peak()`, for real tensors and for fake ones (`FakeTensorMode`, which gives shapes and
storages but no data) alike: the same count on a CPU with real tensors and on a fake,
full-size model is what lets the memory model be checked where the truth is at hand.

torch's own `torch.distributed._tools.mem_tracker` hooks every parameter and fails on frozen
ones (a LoRA's base), which is why this counts storages instead (STACK.md, trap 14).

What it cannot see: memory that is never a tensor's storage (a kernel's scratch space, the CUDA
context, the allocator's caching): `bench/memory_model.py` names those, and
`core.caching_allocator` turns the allocation trace recorded here into reserved memory.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GB = 1024**3


@dataclass
class DeviceCount:
    """Live bytes on one device: now, and the most since the last peak reset."""

    live: int = 0
    peak: int = 0


@dataclass
class TraceEvent:
    """One allocation (`size` > 0) or free (`size` < 0) of a storage, in the order they happened."""

    key: int
    size: int


class LiveMemoryTracker(TorchDispatchMode):
    """Counts live storage bytes per device type; records the allocation trace of `traced`.

    Storages made before the tracker was entered are not counted unless passed to `track`.
    """

    def __init__(self, traced: str | None = None, workspaces: dict | None = None):
        super().__init__()
        self.traced = traced  # device type whose allocations and frees are kept in `trace`
        # operator -> bytes(args, kwargs) of scratch space it takes on `traced` while it runs
        self.workspaces = workspaces or {}
        self.counts: dict[str, DeviceCount] = {}
        self.trace: list[TraceEvent] = []
        self._live: dict[int, tuple[str, int, weakref.ref]] = {}
        self._synthetic = 0  # allocations that are not storages (workspaces) count down from -1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value)
        workspace = self.workspaces.get(func)
        if workspace is not None:
            size = workspace(args, kwargs or {})
            if size:
                self.transient(self.traced, size)
        return out

    def track(self, *tensors: torch.Tensor) -> None:
        """Count these tensors' storages from now on (each storage once, however many views)."""
        for tensor in tensors:
            storage = tensor.untyped_storage()
            key = storage._cdata
            size = storage.nbytes()
            known = self._live.get(key)
            if known is not None:
                if known[1] != size:  # resized in place
                    self._forget(key)
                else:
                    continue
            device = tensor.device.type  # a fake tensor's storage is on "meta"; its device isn't
            self._live[key] = (device, size, weakref.ref(storage, self._freed_callback(key)))
            self._add(device, key, size)

    def _freed_callback(self, key: int):
        def freed(_reference) -> None:
            self._forget(key)

        return freed

    def _forget(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self._add(entry[0], key, -entry[1])

    def _add(self, device: str, key: int, size: int) -> None:
        count = self.counts.setdefault(device, DeviceCount())
        count.live += size
        count.peak = max(count.peak, count.live)
        if device == self.traced and size:
            self.trace.append(TraceEvent(key, size))

    def live(self, device: str) -> int:
        return self.counts.get(device, DeviceCount()).live

    def peak(self, device: str) -> int:
        return self.counts.get(device, DeviceCount()).peak

    def reset_peak(self) -> None:
        """Start a new peak from what is alive now (as `torch.cuda.reset_peak_memory_stats`)."""
        for count in self.counts.values():
            count.peak = count.live

    def transient(self, device: str, size: int) -> None:
        """A scratch allocation freed at once (a kernel's workspace), so peaks and trace see it.

        Counted after the operator's outputs, which a kernel allocates before its scratch space.
        """
        key = self._synthetic_key()
        self._add(device, key, size)
        self._add(device, key, -size)

    def hold(self, device: str, size: int) -> None:
        """An allocation that stays for the whole run (a library's workspace), not a tensor."""
        self._add(device, self._synthetic_key(), size)

    def _synthetic_key(self) -> int:
        self._synthetic -= 1
        return self._synthetic
