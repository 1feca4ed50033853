"""The arithmetic the network computes in: fp32, or bf16 mixed precision where the hardware has it.

Mixed precision here means: the network's convolutions run under ``torch.autocast`` in bfloat16 (on CPUs with
AVX-512 BF16 or AMX, and on CUDA GPUs that support it); its weights stay fp32 (the optimiser updates fp32 master
weights), and the displacement it returns, the warps and the losses are fp32. On this project's 2-core AVX-512
BF16 machine that halves an adaptation step (docs/RESULTS.md, issue 10) and moves the sweep's val TRE by about
0.01 mm.
"""

from __future__ import annotations

import torch

from .errors import InputError

PRECISIONS = ("auto", "fp32", "bf16")
"""What a user may ask for; ``auto`` is bf16 where :func:`bf16_supported`, else fp32."""


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is fast on ``device``: a CPU with AVX-512 BF16 (or AMX) instructions, or a CUDA GPU
    with native bf16. (torch emulates bf16 elsewhere, more slowly than fp32.)"""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"`` for a requested precision on ``device``.

    Raises:
        InputError: for an unknown name, or ``bf16`` asked for where the hardware lacks it.
    """
    if name not in PRECISIONS:
        raise InputError(f"precision {name!r}: choose one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if name == "bf16" and not bf16_supported(device):
        raise InputError(f"precision 'bf16': {device} has no fast bf16 arithmetic here; use fp32 or auto")
    return name
