"""Device selection: 'auto' means CUDA when available, else CPU; asking for a device that is absent is an error.

Owns the one rule that turns a --device flag into a torch.device.
"""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but this machine has no CUDA GPU (torch sees none)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {name!r}")
