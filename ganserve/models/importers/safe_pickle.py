"""A restricted unpickler for foreign network files: only the few globals they need, nothing from the file runs.

Owns the allow-list, the placeholders for NVlabs persistent objects (PersistentObject: class name + state, the
embedded source code kept as an inert string) and EasyDict, and tensor rebuilding from torch.save blobs.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
from typing import Any

import numpy as np
import torch

from ganserve.errors import ImportRefused

# numpy scalars (NVlabs keeps e.g. weight_gain as np.float64) may only be of these kinds: no object dtype.
_NUMERIC_DTYPES = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1", "?"}
MAX_BLOB_BYTES = 4 << 30


class UnsafePickleError(ImportRefused):
    """The file names a global outside the allow-list or is not a readable pickle; the message says which."""


class PersistentObject:
    """An NVlabs persistent object (torch_utils.persistence) read as data: the class name, its state (the module's
    __dict__: attributes, `_parameters`, `_buffers`, `_modules`), init args. The class's source code is kept only as
    an inert string (`module_src`) and is never executed, imported or written."""

    def __init__(self, meta: dict[str, Any]):
        if not isinstance(meta, dict) or meta.get("type") != "class":
            raise UnsafePickleError(f"an NVlabs persistent object with unexpected metadata ({type(meta).__name__})")
        self.class_name = meta.get("class_name")
        self.version = meta.get("version")
        self.module_src = meta.get("module_src")
        self.state = meta.get("state")
        if not isinstance(self.class_name, str) or not isinstance(self.state, dict):
            raise UnsafePickleError("an NVlabs persistent object without a class name or state")

    def __repr__(self) -> str:
        return f"<persistent {self.class_name}>"

    # -- the torch.nn.Module parts of the state ---------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)

    def children(self) -> dict[str, Any]:
        return dict(self.state.get("_modules") or {})

    def child(self, name: str) -> Any:
        return self.children().get(name)

    def tensors(self) -> dict[str, torch.Tensor]:
        """This module's own parameters and buffers (not its children's), None entries dropped."""
        out = {}
        for group in ("_parameters", "_buffers"):
            for key, value in (self.state.get(group) or {}).items():
                if value is not None:
                    out[key] = value
        return out

    def named_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """All parameters and buffers below this module, named as torch's state_dict names them."""
        out = {f"{prefix}{k}": v for k, v in self.tensors().items()}
        for name, child in self.children().items():
            if isinstance(child, PersistentObject):
                out.update(child.named_tensors(f"{prefix}{name}."))
        return out


def _load_from_bytes(blob: bytes) -> Any:
    """torch.storage._load_from_bytes: a tensor storage, pickled as a legacy torch.save blob; read with
    torch.load(weights_only=True), which itself allows only tensor data."""
    if not isinstance(blob, (bytes, bytearray)) or len(blob) > MAX_BLOB_BYTES:
        raise UnsafePickleError("a tensor storage that is not a byte string")
    storage = torch.load(io.BytesIO(bytes(blob)), map_location="cpu", weights_only=True)
    if not isinstance(storage, (torch.storage.TypedStorage, torch.storage.UntypedStorage)):
        raise UnsafePickleError(f"a tensor storage blob that holds a {type(storage).__name__}")
    return storage


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list, torch.Size)) or not all(type(v) is int for v in value):
        raise UnsafePickleError(f"a tensor with a malformed {what}")
    return tuple(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 on data only: a view of a storage read by _load_from_bytes."""
    if not isinstance(storage, torch.storage.TypedStorage) or type(storage_offset) is not int:
        raise UnsafePickleError("a tensor whose storage did not come from a torch.save blob")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    t = torch.empty((0,), dtype=storage.dtype)
    return t.set_(storage._untyped_storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None) -> torch.Tensor:
    """torch._utils._rebuild_parameter(_with_state): the parameter's data as a plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("a parameter that is not a tensor")
    return data


def _numpy_dtype(name, align=False, copy=False) -> np.dtype:
    if not isinstance(name, str) or name.lstrip("<>=|") not in _NUMERIC_DTYPES:
        raise UnsafePickleError(f"refusing to load numpy.dtype({name!r}): only numeric dtypes are allowed")
    return np.dtype(name)


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise UnsafePickleError("refusing a numpy scalar that is not a plain number")
    if len(data) != dtype.itemsize:
        raise UnsafePickleError("a numpy scalar of the wrong size")
    return np.frombuffer(data, dtype=dtype)[0]


class _NdarrayType:
    """Stands in for numpy.ndarray: only an argument of numpy's _reconstruct, never instantiated into an array."""


def _numpy_reconstruct(subtype, shape=(0,), typecode=b"b"):
    """numpy.core.multiarray._reconstruct: an empty uint8 array that the pickle's BUILD (ndarray.__setstate__) then
    fills. Its dtype can only come from _numpy_dtype, so it is numeric (no object arrays)."""
    if subtype is not _NdarrayType:
        raise UnsafePickleError("refusing numpy _reconstruct of anything but a plain ndarray")
    return np.empty((0,), np.uint8)


def _codecs_encode(text, encoding="utf-8"):
    """_codecs.encode as protocol-2 pickles use it to spell bytes: str -> bytes in latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("refusing _codecs.encode other than str -> latin-1 bytes")
    return text.encode("latin-1")


def _reconstruct_persistent_obj(meta) -> PersistentObject:
    return PersistentObject(meta)


def _make_allowed() -> dict[tuple[str, str], Any]:
    """The allow-list: (module, name) -> the data-only callable that stands in for it. Built afresh per load so
    that nothing a file does to these objects outlives the load."""

    class EasyDict(dict):
        """dnnlib.util.EasyDict as a plain dict."""

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("_codecs", "encode"): _codecs_encode,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_from_bytes,
        ("numpy", "dtype"): _numpy_dtype,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("numpy", "ndarray"): _NdarrayType,  # numeric arrays (NVlabs stylegan3 keeps e.g. sizes as arrays)
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("dnnlib", "EasyDict"): EasyDict,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    }
    return {key: _fresh(value) for key, value in allowed.items()}


def _fresh(obj: Any) -> Any:
    """A new function object around `obj` (classes are used as they are), so that BUILD opcodes aimed at a global
    change only this load's copy."""
    if isinstance(obj, type):
        return obj

    def call(*args, **kwargs):
        return obj(*args, **kwargs)

    call.__name__ = getattr(obj, "__name__", "call")
    return call


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class knows only the allow-list and refuses every other global by name."""

    def __init__(self, file, allowed: dict[tuple[str, str], Any]):
        super().__init__(file)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol-2 files spell some names as Python 2 did
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return self.allowed[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: the file names a global that network files do not need "
                "(only tensors, dicts and NVlabs persistent-object records are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a persistent id: this is not a plain network pickle")


def restricted_load(data: bytes) -> Any:
    """Unpickle `data` with only the allowed globals. Raises UnsafePickleError (one-line message) for a refused
    global or for data that is not a readable pickle."""
    if data[:4] == b"PK\x03\x04":
        raise UnsafePickleError("a zip archive (torch.save file), not an NVlabs network pickle")
    if not data.startswith(b"\x80"):
        raise UnsafePickleError("not a pickle (no pickle protocol header)")
    try:
        return RestrictedUnpickler(io.BytesIO(data), _make_allowed()).load()
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError) as e:
        raise UnsafePickleError(f"not a complete pickle ({type(e).__name__}: {_first_line(e) or 'ran out of input'})"
                                ) from None
    except Exception as e:  # malformed opcodes/arguments surface as many types; none of them may escape
        raise UnsafePickleError(f"not a readable pickle ({type(e).__name__}: {_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""
