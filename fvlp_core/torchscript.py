"""Tensors out of a TorchScript archive, without running any of it.

OpenAI distributes its CLIP weights (``ViT-B-16.pt``) as TorchScript archives: a zip whose
``data.pkl`` pickles the scripted module tree and whose ``code/`` holds its TorchScript
source. ``torch.jit.load`` would compile and run that code, and ``torch.load(weights_only=
True)`` refuses archives. :func:`read_torchscript_tensors` instead unpickles ``data.pkl``
with an unpickler that knows only tensor rebuilding, storages and plain containers: every
scripted class becomes an inert attribute holder, any other global is refused, and no code
from the archive is executed. The tensors come out under their state-dict names.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class TorchScriptError(ValueError):
    """An archive that is not a TorchScript zip, or that pickles something other than tensors."""


class _ScriptedObject:
    """Stands in for a scripted module: keeps the attributes the archive gives it, nothing else."""

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


def _storage_dtype(name: str) -> torch.dtype:
    return STORAGE_DTYPES[name]


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_: Any) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(tensor: torch.Tensor, *_: Any) -> torch.Tensor:
    return tensor


class _WeightsUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__."):
            return type(name, (_ScriptedObject,), {})
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise TorchScriptError(f"{self.path}: refused to load {module}.{name} (only tensors and containers are read)")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and pid[1] in STORAGE_DTYPES):
            raise TorchScriptError(f"{self.path}: unknown persistent record {pid!r:.80}")
        raw = self.archive.read(f"{self.prefix}data/{pid[2]}")
        return torch.frombuffer(bytearray(raw), dtype=_storage_dtype(pid[1])) if raw else torch.empty(0)


def is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _flatten(node: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if isinstance(node, torch.Tensor):
        out[prefix.rstrip(".")] = node
    elif isinstance(node, _ScriptedObject):
        for name, value in getattr(node, "attributes", {}).items():
            _flatten(value, f"{prefix}{name}.", out)
    elif isinstance(node, dict):
        for name, value in node.items():
            _flatten(value, f"{prefix}{name}.", out)


def read_torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of the archive's module tree, by dotted state-dict name."""
    path = Path(path)
    if not is_torchscript_archive(path):
        raise TorchScriptError(f"{path}: not a TorchScript archive (no constants.pkl and code/ in a zip)")
    with zipfile.ZipFile(path) as archive:
        data_pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not data_pkl:
            raise TorchScriptError(f"{path}: TorchScript archive without a top-level data.pkl")
        prefix = data_pkl[0][: -len("data.pkl")]
        root = _WeightsUnpickler(archive.read(data_pkl[0]), archive, prefix, path).load()
    tensors: dict[str, torch.Tensor] = {}
    _flatten(root, "", tensors)
    if not tensors:
        raise TorchScriptError(f"{path}: the archive holds no tensors")
    return tensors
