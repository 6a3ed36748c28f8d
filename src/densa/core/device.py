"""Where training runs and in what precision: `--device auto|cpu|cuda|mps`, `--precision fp32|bf16|auto`.

bf16 autocast only pays where the hardware multiplies bf16 natively: CUDA GPUs that support it, and
CPUs with AVX512-BF16 or AMX. Elsewhere PyTorch emulates it, which is many times slower than fp32
(measured on an AVX2-only EPYC: 0.35 vs ~100 GFLOP/s), so asking for it is an error and "auto" picks
fp32. The choice is made from CPU flags, never from a timing, so it is the same on every run.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DensaError

FAST_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
FORCE_BF16_ENV = "DENSA_FORCE_BF16"  # =1 runs bf16 even where it is slow (benchmarks, experiments)


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str]:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_is_fast(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in FAST_BF16_FLAGS)


def resolve_device(name: str = "auto") -> str:
    """'auto' -> the best available; an explicit device that is not there is a one-line error."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    has = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": bool(mps and mps.is_available())}
    if name == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if has[d])
    if name not in has:
        raise DensaError(f"unknown device {name!r}; choose one of: auto, cpu, cuda, mps")
    if not has[name]:
        why = "this torch build has no CUDA or no GPU is visible" if name == "cuda" else "MPS is unavailable"
        raise DensaError(f"--device {name} is not available here ({why}); use --device cpu or auto")
    return name


def resolve_precision(name: str, device: str) -> str:
    """'fp32' | 'bf16' | 'auto' on `device` -> 'fp32' or 'bf16'; bf16 where it is slow is an error."""
    if name == "fp32":
        return "fp32"
    if name not in ("bf16", "auto"):
        raise DensaError(f"unknown precision {name!r}; choose one of: fp32, bf16, auto")
    if device == "cuda":
        import torch

        fast, why = torch.cuda.is_bf16_supported(), "this GPU has no native bf16"
    elif device == "cpu":
        fast, why = cpu_bf16_is_fast(), "this CPU has no AVX512-BF16/AMX, so bf16 is emulated and slow"
    else:
        fast, why = False, f"densa does not use bf16 autocast on {device}"
    if fast:
        return "bf16"
    if name == "auto":
        return "fp32"
    if os.environ.get(FORCE_BF16_ENV) == "1":
        return "bf16"
    raise DensaError(
        f"--precision bf16 is not supported here ({why}); use --precision fp32 "
        f"(or set {FORCE_BF16_ENV}=1 to run it anyway)"
    )
