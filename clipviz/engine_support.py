"""What makes the engine's loop cheap, apart from the loop: value binning from float bits, the glibc heap
setting, the one-transfer readback, and when torch.compile can be used."""

from __future__ import annotations

import ctypes
import os
import shutil

import numpy as np
import torch
from torch import Tensor

from .records import VALUE_EDGES

N_VALUE_BINS = len(VALUE_EDGES) + 2  # below, bins, above, NaN


def value_bins(x: Tensor) -> Tensor:
    """Bin index (int32) of each float32 element on records.VALUE_EDGES, from its bits.

    torch.bucketize does the same job 4-10x slower here (a binary search per element); the float's
    exponent field is floor(log2|x|) + 127 already. inf and NaN have the maximum exponent; NaN gets the last bin.
    int32 throughout, and the sign folded in with one xor, since the epoch's histogram pass is dispatch- and
    memory-bound: o = clamp(e, 112, 141) - 112 is 0 for |x| < 2^-14 ... 29 for |x| >= 2^14; positive x goes to
    30 + o, negative x to 29 - o = 30 + (o ^ -1), so bin 0 is the most negative.
    """
    b = x.contiguous().view(torch.int32)
    o = ((b >> 23) & 255).clamp_(112, 141).sub_(112)
    idx = o.bitwise_xor_(b >> 31).add_(30)  # b >> 31 is 0 for x >= +0, -1 (all ones) for x <= -0
    return idx.masked_fill_(x != x, N_VALUE_BINS - 1)  # NaN: the only x with x != x


_COMPILABLE_CLIPS = {"none", "value", "norm", "tensor-norm", "agc"}  # stateless rules: no host-side state to guard


def compile_unsupported(kind: str, optimizers: set[str], strategies: set[str]) -> str | None:
    """Why `--compile` cannot be used for this setup (None: it can). The compiled step needs the MLP's
    hand-written backward, an optimizer without a step counter (Adam's bias correction would recompile every
    step) and stateless clipping (AutoClip's history grows a column per step), and a C++ compiler for inductor."""
    if kind != "mlp":
        return "compiles the MLP only (the RNN uses autograd)"
    if optimizers - {"sgd", "rmsprop"}:
        return "compiles SGD and RMSprop only"
    if strategies - _COMPILABLE_CLIPS:
        return f"compiles stateless clipping only ({', '.join(sorted(_COMPILABLE_CLIPS))})"
    if not shutil.which(os.environ.get("CXX", "g++")):
        return "no C++ compiler found (g++ or $CXX)"
    return None


_HEAP_TUNED = False


def reuse_freed_memory() -> None:
    """Ask glibc to keep freed blocks for reuse instead of unmapping / trimming them (once per process).

    Each step allocates and frees the same few 100 KB-10 MB tensors; glibc's default serves those with
    fresh mmap()s or trims them off the heap, so every step page-faults its memory back in: measured here,
    a 125-run tutorial chunk ran 2.0x slower per step (and validation 3.8x) than with this setting. The cost
    is that the process keeps its peak heap instead of returning it to the OS. A no-op off glibc.
    """
    global _HEAP_TUNED
    if _HEAP_TUNED:
        return
    _HEAP_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 28)  # M_MMAP_THRESHOLD: blocks under 256 MiB come from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of free heap top (a C int)
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): keep the default allocator
        pass


def read_back(parts: list[Tensor]) -> list[np.ndarray]:
    """Copy the epoch's device tensors to the host in ONE transfer, as float64 numpy arrays of their shapes.

    On the CPU there is no transfer: each part is copied by numpy (measured ~7x cheaper than the staging buffer)."""
    if parts[0].device.type == "cpu":
        return [np.array(p.detach().numpy(), dtype=np.float64) for p in parts]
    sizes = [p.numel() for p in parts]
    buf = torch.empty(sum(sizes), dtype=torch.float64, device=parts[0].device)
    for dst, p in zip(buf.split(sizes), parts, strict=True):
        dst.view(p.shape).copy_(p)
    flat = buf.cpu().numpy()
    # numpy from here: per-run slicing of small host arrays is ~10x cheaper than torch indexing
    return [c.reshape(p.shape) for c, p in zip(np.split(flat, np.cumsum(sizes)[:-1]), parts, strict=True)]
