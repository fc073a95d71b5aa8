"""Whether this machine computes in bfloat16 natively, and the training dtype that follows.

CPUs vary: with AVX-512 BF16 or AMX, oneDNN runs bf16 matrix products in hardware; with only
AVX2/AVX-512F it emulates them, and a bf16 step measured 13-16x *slower* than float32 on such a
machine. ``train.dtype=bfloat16`` therefore falls back to float32 there unless
``train.force_dtype=true``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

DTYPES = ("float32", "bfloat16")  # train.dtype
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (``flags`` line of ``/proc/cpuinfo``; empty where there is none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def native_bf16(device: torch.device, flags: Optional[set[str]] = None) -> bool:
    """Whether bf16 matrix products run in hardware on ``device`` (CUDA: the GPU supports bf16;
    CPU: one of :data:`BF16_CPU_FLAGS`)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def kernel_path(device: torch.device, flags: Optional[set[str]] = None) -> str:
    """What a benchmark measured: the device, torch's CPU kernel level and how bf16 runs."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}, bf16 native={native_bf16(device)}"
    flags = cpu_flags() if flags is None else flags
    bf16 = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    return (f"cpu {torch.backends.cpu.get_cpu_capability()}, bf16 "
            f"{'native (' + ', '.join(bf16) + ')' if bf16 else 'emulated (no avx512_bf16/amx_bf16)'}")


def training_dtype(requested: str, force: bool, device: torch.device,
                   flags: Optional[set[str]] = None) -> tuple[str, Optional[str]]:
    """The dtype to train in for ``train.dtype=requested`` and a warning to log (None: none).

    ``bfloat16`` without native support becomes ``float32`` unless ``force``; forced, it stays
    bf16 with a warning that it is emulated."""
    if requested != "bfloat16" or native_bf16(device, flags):
        return requested, None
    where = kernel_path(device, flags)
    if force:
        return requested, (f"train.dtype=bfloat16 forced on a device without native bf16 ({where}): emulated bf16 "
                           f"steps can be an order of magnitude slower than float32")
    return "float32", (f"train.dtype=bfloat16 requested but this device has no native bf16 ({where}): training in "
                       f"float32 instead (emulated bf16 was measured 13-16x slower); set train.force_dtype=true to "
                       f"keep bf16")
