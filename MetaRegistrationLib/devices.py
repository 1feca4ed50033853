"""Where the network runs: a device name as users write it, checked against what torch can use here."""

from __future__ import annotations

import torch

from .errors import InputError

DEVICE_NAMES = ("auto", "cpu", "cuda")
"""What a user may ask for (``cuda:N`` picks one GPU); ``auto`` is CUDA when torch sees a GPU, else the CPU."""


def torch_device(name: str | torch.device) -> torch.device:
    """The torch device ``name`` asks for.

    Raises:
        InputError: for a name that is not a device, or CUDA when torch sees no CUDA device (a CPU-only build, or
            no GPU), naming what was asked for.
    """
    if isinstance(name, torch.device):
        device = name
    else:
        text = str(name).strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(text)
        except RuntimeError:
            raise InputError(f"device {name!r}: not a device; choose one of {', '.join(DEVICE_NAMES)}") from None
        if device.type not in ("cpu", "cuda"):
            raise InputError(f"device {name!r}: not supported; choose one of {', '.join(DEVICE_NAMES)}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: torch sees no CUDA device on this machine (torch "
                             f"{torch.__version__}); use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
