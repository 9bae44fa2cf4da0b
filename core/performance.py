"""The trainer's speed and memory switches, each behind its own flag (core/config.py).

Every switch here changes how fast a step runs or how much memory it holds, never what it
computes (up to floating-point order): the attention kernel, regional compilation of the
transformer blocks, how many blocks recompute their activations, the optimizer's kernel and the
CUDA allocator's segment policy. `bench/gpu_stage_table.py` measures each one with and without.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os

import torch

from core.errors import UserError

# --attention_backend -> torch's SDPA backends. "auto" leaves the choice to torch.
_SDPA_BACKENDS = {
    "flash": "FLASH_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
}


def attention_context(backend: str):
    """A context under which scaled-dot-product attention uses only `backend`.

    It must cover the backward pass too: recomputed (checkpointed) blocks run their attention
    again there, and would otherwise pick a kernel of their own.
    """
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, _SDPA_BACKENDS[backend])])


def fastest_attention_backend(
    device: torch.device, dtype: torch.dtype, heads: int, head_dim: int, tokens: int
) -> str:
    """Time each fused SDPA kernel on one attention of the run's shape; return the fastest.

    Which of flash, cuDNN and memory-efficient attention wins for head dim 64 depends on the GPU
    and the torch build, so it is measured here rather than assumed: forward and backward, after
    one warm-up, on CUDA events. Kernels that cannot run are left out; the CPU gets "auto".
    """
    if device.type != "cuda":
        return "auto"
    tokens = min(tokens, 8192)  # the ranking holds at this length; the probe stays short
    shape = (1, heads, tokens, head_dim)
    query = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    timings = {}
    for backend in ("cudnn", "flash", "efficient"):
        try:
            with attention_context(backend):
                for _ in range(2):  # the first call warms the kernel up
                    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                    start.record()
                    out = torch.nn.functional.scaled_dot_product_attention(query, query, query)
                    out.sum().backward()
                    end.record()
            torch.cuda.synchronize(device)
            timings[backend] = start.elapsed_time(end)
        except RuntimeError:
            continue
    del query
    return min(timings, key=timings.get) if timings else "auto"


def check_attention_backend(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    """Fail before training if the chosen kernel cannot run CogVideoX's attention here.

    One tiny attention of the real head dim (64) in the real dtype, forward and backward, under
    the chosen backend: torch raises "No available kernel" when the GPU, dtype or build lacks it.
    """
    if backend in ("auto", "fastest"):
        return
    if backend != "math" and device.type != "cuda":
        raise UserError(
            f"--attention_backend {backend} needs a CUDA GPU; on {device.type} use auto or math"
        )
    shape = (1, 2, 64, 64)  # batch, heads, tokens, head dim
    query = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    try:
        with attention_context(backend):
            out = torch.nn.functional.scaled_dot_product_attention(query, query, query)
            out.sum().backward()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0][:200]
        raise UserError(
            f"--attention_backend {backend} cannot run here ({reason}); choose auto"
        ) from None


def checkpoint_blocks(transformer, ratio: float, offload: bool = False) -> int:
    """Recompute activations in the backward pass for `ratio` of the transformer blocks.

    With every block (ratio 1) and no offload this is diffusers' own gradient checkpointing.
    Otherwise the first blocks are wrapped one by one: the rest keep their activations, which
    costs memory and saves their recomputation (about a third of a step's forward work per
    block). The wrapper replaces the block's `forward` on the instance, so parameter names (and
    the saved LoRA's keys) do not change. Returns the number of checkpointed blocks.

    `offload` keeps what a checkpointed block saves, its inputs, in CPU memory until the backward
    pass needs them (see `offload_activations`). That needs torch's reentrant checkpoint, which
    saves its inputs through autograd, where the offload hooks can move them.
    """
    blocks = transformer.transformer_blocks
    count = round(ratio * len(blocks))
    if count >= len(blocks) and not offload:
        transformer.enable_gradient_checkpointing()
        return len(blocks)
    for block in list(blocks)[:count]:
        block.forward = _recomputed(block.forward, reentrant=offload)
    return count


def _recomputed(forward, reentrant: bool):
    from torch.utils.checkpoint import checkpoint

    signature = inspect.signature(forward)

    @functools.wraps(forward)
    def recomputed(*args, **kwargs):
        if not torch.is_grad_enabled():  # inference (validation) keeps nothing anyway
            return forward(*args, **kwargs)
        if not reentrant:
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        # The reentrant form takes positional arguments only, and returns outputs that need no
        # gradient when no input does (a LoRA's first block: its input comes from frozen
        # layers). A leaf that asks for a gradient keeps the block's LoRA weights learning.
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.values())
        if not any(isinstance(v, torch.Tensor) and v.requires_grad for v in values):
            values[0] = values[0].detach().requires_grad_()
        return checkpoint(forward, *values, use_reentrant=True)

    return recomputed


def offload_activations(enabled: bool, device: torch.device):
    """A context under which tensors saved for the backward pass wait in CPU memory.

    Around the forward pass with checkpointed blocks, what is saved is mostly each block's input
    (for CogVideoX-5B at 49x480x720, 42 x 105 MB): moved to pinned host memory as the forward
    goes, and back when the backward pass reaches each block, at the cost of the copies.
    """
    if not enabled:
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda")


def compile_blocks(transformer) -> int:
    """Regional compilation: each transformer block is compiled on its own.

    The blocks share one code path, so torch compiles it once and reuses the graph for every
    block (parameters are graph inputs); compile time stays that of one block rather than of the
    whole model, and the embedding and output layers run eagerly.
    """
    for block in transformer.transformer_blocks:
        block.compile()
    return len(transformer.transformer_blocks)


def optimizer_kwargs(implementation: str, device: torch.device) -> dict:
    """The keyword that picks torch's Adam/AdamW kernel: a Python loop, foreach or fused."""
    if implementation == "auto":
        return {}
    if implementation == "for-loop":
        return {"foreach": False}
    if implementation == "foreach":
        return {"foreach": True}
    if device.type not in ("cuda", "cpu"):
        raise UserError(
            f"--optimizer_implementation fused has no kernel on {device.type}; choose auto"
        )
    return {"fused": True}


ALLOCATOR_ENV = "PYTORCH_CUDA_ALLOC_CONF"


def enable_expandable_segments() -> None:
    """Let the CUDA caching allocator grow segments in place instead of caching fixed blocks.

    Must run before the first CUDA allocation. It lowers reserved memory when tensor sizes vary
    (buckets of different shapes, validation beside training); it changes nothing on the CPU.
    """
    settings = [s for s in os.environ.get(ALLOCATOR_ENV, "").split(",") if s]
    settings = [s for s in settings if not s.startswith("expandable_segments")]
    os.environ[ALLOCATOR_ENV] = ",".join([*settings, "expandable_segments:True"])
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
