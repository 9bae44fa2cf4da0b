"""What the CUDA caching allocator would reserve for a sequence of allocations and frees.

torch never returns freed GPU memory to the driver on its own: it keeps the segments it got from
`cudaMalloc` and carves later tensors out of them. `torch.cuda.max_memory_reserved` (the
reference's column) is therefore the live tensors plus rounding plus whatever space the
allocator could not reuse. `CachingAllocator` replays an allocation trace (the one
`core.live_memory.LiveMemoryTracker` records) through the allocator's rules as torch 2.x's
`CUDACachingAllocator.cpp` states them, default settings:

- every request is rounded up to a multiple of 512 bytes;
- requests of at most 1 MiB come from a small pool of 2 MiB segments; larger ones from a large
  pool, whose new segments are 20 MiB for requests under 10 MiB and otherwise the request
  rounded up to 2 MiB;
- a request takes the smallest cached free block that fits (best fit), splitting off the rest
  when at least 512 bytes (small pool) or more than 1 MiB (large pool) remain;
- a freed block merges with free neighbours of its segment; segments go back to the driver only
  on `empty_cache()`.

With expandable segments (`--expandable_segments`) each pool is one segment that grows in
2 MiB pages instead of adding segments. What this cannot know: other streams (the trainer uses
one), and the allocator freeing its cache and retrying when a `cudaMalloc` fails, which on a GPU
smaller than the predicted reservation brings the real figure down towards the allocated one.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

MIN_BLOCK = 512  # kMinBlockSize: every request is rounded up to a multiple of this
SMALL_REQUEST = 1 << 20  # kSmallSize: requests up to 1 MiB use the small pool
SMALL_SEGMENT = 2 << 20  # kSmallBuffer: the small pool's segment size
LARGE_SEGMENT = 20 << 20  # kLargeBuffer: the segment for large requests under MIN_LARGE_ALLOC
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc
ROUND_LARGE = 2 << 20  # kRoundLarge: bigger segments are rounded up to 2 MiB
PAGE = 2 << 20  # expandable segments map memory in pages of this size


def round_size(size: int) -> int:
    """The bytes a request of `size` takes from a block."""
    return max(MIN_BLOCK, -(-size // MIN_BLOCK) * MIN_BLOCK)


def segment_size(rounded: int) -> int:
    """The bytes `cudaMalloc` is asked for when no cached block fits a request."""
    if rounded <= SMALL_REQUEST:
        return SMALL_SEGMENT
    if rounded < MIN_LARGE_ALLOC:
        return LARGE_SEGMENT
    return -(-rounded // ROUND_LARGE) * ROUND_LARGE


@dataclass(eq=False)
class _Block:
    address: int
    size: int
    segment: int
    small: bool  # which pool it belongs to
    free: bool = True
    prev: _Block | None = None
    next: _Block | None = None

    def key(self) -> tuple[int, int]:
        return (self.size, self.address)


class _Pool:
    """The cached free blocks of one pool, ordered by (size, address) for best fit."""

    def __init__(self) -> None:
        self.order: list[tuple[int, int]] = []
        self.blocks: dict[int, _Block] = {}  # by address

    def add(self, block: _Block) -> None:
        block.free = True
        bisect.insort(self.order, block.key())
        self.blocks[block.address] = block

    def remove(self, block: _Block) -> None:
        del self.order[bisect.bisect_left(self.order, block.key())]
        del self.blocks[block.address]

    def best_fit(self, size: int) -> _Block | None:
        index = bisect.bisect_left(self.order, (size, -1))
        return self.blocks[self.order[index][1]] if index < len(self.order) else None


class CachingAllocator:
    """Allocated and reserved bytes of the caching allocator for a replayed trace."""

    def __init__(self, expandable_segments: bool = False):
        self.expandable = expandable_segments
        self.pools = {True: _Pool(), False: _Pool()}  # small, large
        self.segments: dict[int, int] = {}  # segment id -> bytes reserved
        self._segment_count = 0
        self._tails: dict[bool, _Block] = {}  # expandable: each pool's last block
        self._next_address = 0
        self._in_use: dict[int, _Block] = {}  # allocation key -> its block
        self.allocated = 0
        self.reserved = 0
        self.max_allocated = 0
        self.max_reserved = 0

    def reset_peak(self) -> None:
        """As `torch.cuda.reset_peak_memory_stats`."""
        self.max_allocated = self.allocated
        self.max_reserved = self.reserved

    def replay(self, events: Iterable[tuple[int, int]]) -> None:
        """(key, +bytes) allocates under `key`; (key, -bytes) frees what `key` holds."""
        for key, size in events:
            if size > 0:
                self.malloc(key, size)
            else:
                self.free(key)

    def malloc(self, key: int, size: int) -> None:
        rounded = round_size(size)
        small = rounded <= SMALL_REQUEST
        pool = self.pools[small]
        block = pool.best_fit(rounded)
        if block is None:
            block = self._grow(small, rounded)
        else:
            pool.remove(block)
        remaining = block.size - rounded
        if remaining >= MIN_BLOCK if small else remaining > SMALL_REQUEST:
            rest = _Block(block.address + rounded, remaining, block.segment, small, prev=block)
            rest.next = block.next
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = rounded
            pool.add(rest)
            if self._tails.get(small) is block:
                self._tails[small] = rest
        block.free = False
        self._in_use[key] = block
        self.allocated += block.size
        self.max_allocated = max(self.max_allocated, self.allocated)

    def free(self, key: int) -> None:
        block = self._in_use.pop(key, None)
        if block is None:
            return  # allocated before the replay started
        self.allocated -= block.size
        pool = self.pools[block.small]
        for neighbour in (block.prev, block.next):
            if neighbour is not None and neighbour.free:
                pool.remove(neighbour)
                block = self._merge(block, neighbour)
        pool.add(block)

    def empty_cache(self) -> None:
        """Give every segment with nothing allocated in it back to the driver (and, with
        expandable segments, the free pages at a segment's end)."""
        for small, pool in self.pools.items():
            for block in list(pool.blocks.values()):
                if block.prev is None and block.next is None:
                    pool.remove(block)
                    self.reserved -= self.segments.pop(block.segment)
                    if self._tails.get(small) is block:
                        del self._tails[small]
                elif self.expandable and block.next is None and block.size >= PAGE:
                    self._unmap_tail(pool, block)

    # ---- internals ------------------------------------------------------------------------

    def _new_segment(self, size: int, small: bool) -> _Block:
        self._segment_count += 1
        block = _Block(self._next_address, size, self._segment_count, small)
        self._next_address += size + PAGE  # segments never touch, so never merge
        self.segments[block.segment] = size
        self._reserve(size)
        return block

    def _reserve(self, size: int) -> None:
        self.reserved += size
        self.max_reserved = max(self.max_reserved, self.reserved)

    def _grow(self, small: bool, rounded: int) -> _Block:
        if not self.expandable:
            return self._new_segment(segment_size(rounded), small)
        tail = self._tails.get(small)
        if tail is None:
            block = self._new_segment(-(-rounded // PAGE) * PAGE, small)
            self._tails[small] = block
            return block
        # Map more pages at the end of the pool's one segment; a free tail block grows.
        have = tail.size if tail.free else 0
        extra = -(-(rounded - have) // PAGE) * PAGE
        self.segments[tail.segment] += extra
        self._reserve(extra)
        if tail.free:
            self.pools[small].remove(tail)
            tail.size += extra
            return tail
        block = _Block(tail.address + tail.size, extra, tail.segment, small, prev=tail)
        tail.next = block
        self._tails[small] = block
        return block

    def _unmap_tail(self, pool: _Pool, block: _Block) -> None:
        pages = block.size // PAGE * PAGE
        pool.remove(block)
        block.size -= pages
        self.segments[block.segment] -= pages
        self.reserved -= pages
        if block.size:
            pool.add(block)
        else:
            self._tails[block.small] = block.prev
            block.prev.next = None

    def _merge(self, block: _Block, neighbour: _Block) -> _Block:
        first, second = sorted((block, neighbour), key=lambda b: b.address)
        first.size += second.size
        first.next = second.next
        if second.next is not None:
            second.next.prev = first
        if self._tails.get(first.small) is second:
            self._tails[first.small] = first
        return first
