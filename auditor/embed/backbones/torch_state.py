"""Read a PyTorch ``state_dict`` file into numpy arrays without torch and without trusting it.

A ``.pth`` file is a pickle, and an unrestricted unpickle runs whatever the file asks for.
This reader admits only the handful of names a plain state_dict needs (an ordered dict, the
tensor-rebuild helpers and the typed storage classes) and maps each of them to a harmless
stand-in defined here; any other global (``os.system``, ``builtins.eval``, a class from the
file's author) raises :class:`UnsafeModelFile` before anything is called.

Both on-disk layouts are supported:

* the zip layout (torch >= 1.6): ``<root>/data.pkl`` plus one raw little-endian blob per
  storage under ``<root>/data/<key>``;
* the legacy layout (torch < 1.6): four pickles in a row (magic number, protocol version,
  system info, the dict) then the list of storage keys and, per key, an int64 element count
  followed by the raw elements.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# Storage class name -> numpy dtype (little-endian, as torch writes them).
STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": None,  # handled specially: no numpy dtype
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class UnsafeModelFile(ValueError):
    """The file asked the unpickler for something a plain state_dict never needs."""


class ModelFileError(ValueError):
    """The file is not a readable PyTorch state_dict."""


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass
class _StorageRef:
    key: str
    dtype: str | None
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_ignored):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeModelFile(
                f"{self.source}: refusing to load '{module}.{name}': a weights file may only contain tensors; "
                "this file asks to import other code, so it was not loaded"
            ) from None

    def persistent_load(self, pid):
        # zip layout:    ('storage', StorageType, key, location, numel)
        # legacy layout: ('storage', StorageType, key, location, numel, view_metadata)
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise UnsafeModelFile(f"{self.source}: unexpected persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise UnsafeModelFile(f"{self.source}: persistent id names no storage type")
        if len(pid) > 5 and pid[5] is not None:
            raise ModelFileError(f"{self.source}: storage views are not supported")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = _StorageRef(key, STORAGE_DTYPES[storage_type.name], numel)
        return ref


def _element_size(dtype: str | None) -> int:
    return 2 if dtype is None else np.dtype(dtype).itemsize


def _as_array(raw: bytes, dtype: str | None) -> np.ndarray:
    if dtype is None:  # bfloat16: the high half of a float32
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype)


def _materialize(obj, source: str):
    if isinstance(obj, _TensorRef):
        flat = obj.storage.data
        if flat is None:
            raise ModelFileError(f"{source}: storage {obj.storage.key} has no data")
        count = int(np.prod(obj.size)) if obj.size else 1
        if count == 0:
            return np.zeros(obj.size, flat.dtype)
        last = obj.offset + sum((s - 1) * st for s, st in zip(obj.size, obj.stride, strict=True))
        if obj.offset < 0 or last >= flat.size:
            raise ModelFileError(f"{source}: tensor reaches outside its storage")
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[obj.offset :], shape=obj.size, strides=[st * item for st in obj.stride], writeable=False
        )
        return np.array(view)  # own, contiguous copy
    if isinstance(obj, dict):
        return OrderedDict((k, _materialize(v, source)) for k, v in obj.items())
    return obj


def _load_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ModelFileError(f"{path}: zip file without exactly one data.pkl")
        root = pkl[0][: -len("data.pkl")]
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pkl[0])), str(path))
        result = unpickler.load()
        for key, ref in unpickler.storages.items():
            member = f"{root}data/{key}"
            if member not in names:
                raise ModelFileError(f"{path}: storage {key} is missing from the archive")
            raw = archive.read(member)
            need = ref.numel * _element_size(ref.dtype)
            if len(raw) < need:
                raise ModelFileError(f"{path}: storage {key} is truncated")
            ref.data = _as_array(raw[:need], ref.dtype)
    return result


def _load_legacy(path: Path) -> dict:
    with open(path, "rb") as f:
        header = []
        for _ in range(3):
            header.append(_RestrictedUnpickler(f, str(path)).load())
        if header[0] != LEGACY_MAGIC:
            raise ModelFileError(f"{path}: not a PyTorch file (bad magic number)")
        if not isinstance(header[2], dict) or not header[2].get("little_endian", True):
            raise ModelFileError(f"{path}: big-endian files are not supported")
        unpickler = _RestrictedUnpickler(f, str(path))
        result = unpickler.load()
        keys = _RestrictedUnpickler(f, str(path)).load()
        if not isinstance(keys, list):
            raise ModelFileError(f"{path}: storage key list missing")
        for key in keys:
            ref = unpickler.storages.get(str(key))
            if ref is None:
                raise ModelFileError(f"{path}: storage {key} is listed but never used")
            numel = int.from_bytes(f.read(8), "little", signed=True)
            nbytes = numel * _element_size(ref.dtype)
            raw = f.read(nbytes)
            if numel < ref.numel or len(raw) != nbytes:
                raise ModelFileError(f"{path}: storage {key} is truncated")
            ref.data = _as_array(raw, ref.dtype)
    return result


def load_state_dict(path: str | Path) -> OrderedDict[str, np.ndarray]:
    """Read a PyTorch state_dict as ``{name: numpy array}`` in torch's own axis order.

    Raises :class:`UnsafeModelFile` if the pickle references anything beyond tensors and
    :class:`ModelFileError` if the file is not a well-formed state_dict.
    """
    path = Path(path)
    try:
        raw = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except (UnsafeModelFile, ModelFileError):
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{path}: not a readable PyTorch state_dict ({exc})") from exc
    if not isinstance(raw, dict):
        raise ModelFileError(f"{path}: expected a state_dict (a dict of tensors), found {type(raw).__name__}")
    state = _materialize(raw, str(path))
    bad = [k for k, v in state.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise ModelFileError(f"{path}: entries that are not tensors: {bad[:3]}")
    return state
