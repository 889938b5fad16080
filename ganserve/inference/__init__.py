"""Inference: from per-image requests (SampleSpec) to uint8 images, on any backend (torch, compile, onnxruntime,
tensorrt) behind one interface. `load_backend` picks and loads one."""

from ganserve.errors import BackendUnavailable
from ganserve.inference.backend import Backend
from ganserve.inference.registry import AUTO_ORDER, BACKEND_CHOICES, BACKENDS, load_backend

__all__ = ["AUTO_ORDER", "BACKENDS", "BACKEND_CHOICES", "Backend", "BackendUnavailable", "load_backend"]
