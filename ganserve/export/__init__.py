"""ONNX and TensorRT export, and the inference backends behind one interface (see backends.py).

Owns nothing itself: importing the package loads backends.py first, which registers every backend module.
"""

from ganserve.export import backends  # noqa: F401  (the backend modules subclass backends.Backend)
