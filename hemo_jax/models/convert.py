"""Hugging Face checkpoints → Flax NNX state, through a strict rule table.

A model family describes its checkpoint layout as a list of :class:`Rule`: a regex on
the source key, target path templates in the NNX state and a transform (transpose a
Linear kernel, move a conv kernel to HWIO, split a fused projection), or a
:class:`Concat` that joins several source tensors into one target (separate query,
key and value projections into one fused projection). The conversion is strict:
every target leaf must be filled, every source key used or explicitly ignored, every
shape checked, and all problems come back together in one :class:`ConversionError`.

Checkpoints are read without torch: safetensors (single or sharded) through a small
header reader (``safetensors.numpy`` cannot represent bfloat16), and PyTorch
``pytorch_model.bin`` zip archives through a restricted unpickler that accepts only
the tensor-rebuild functions of ``torch.save`` and reads the raw storages with numpy.
A repository id is resolved in the local Hugging Face cache only; nothing is
downloaded.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

Transform = Callable[[np.ndarray], "np.ndarray | tuple[np.ndarray, ...]"]


class ConversionError(ValueError):
    """A checkpoint does not fit a model; lists every problem at once."""

    def __init__(
        self,
        source: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
    ):
        self.source = source
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        lines = [f"checkpoint {source} does not fit the model:"]
        for title, items in (
            ("missing (target parameters no checkpoint tensor fills)", self.missing),
            ("unexpected (checkpoint tensors no rule uses or ignores)", self.unexpected),
            ("mis-shaped", self.mismatched),
        ):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {item}" for item in items)
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------------------
# Rules and transforms


@dataclasses.dataclass(frozen=True)
class Concat:
    """Several source tensors make one target, joined along ``axis`` in ``pieces`` order.

    Regex group ``group`` of the rule's pattern names the piece a key holds, e.g.
    ``(query|key|value)`` for a fused ``[D, 3D]`` projection kernel.
    """

    group: int
    pieces: tuple[str, ...]
    axis: int = -1


# Separate query/key/value projections (group 1 of the pattern names which) joined
# along the output axis into one fused projection: [in, 3 * out] kernel, [3 * out] bias.
QKV = Concat(group=1, pieces=("query", "key", "value"))


@dataclasses.dataclass(frozen=True)
class Rule:
    """Map source keys matching ``pattern`` (full match) onto NNX state paths.

    ``targets`` are ``str.format`` templates over the regex groups, dot-separated
    (``"layers.{0}.attention.query.kernel"``); digit parts become list indices. A
    transform returning a tuple fills several targets, in order. With ``concat``,
    each matching key is one piece of a single target (transformed first).
    """

    pattern: str
    targets: tuple[str, ...]
    transform: Transform | None = None
    concat: Concat | None = None

    def __post_init__(self):
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        if self.concat is not None and len(self.targets) != 1:
            raise ValueError(f"rule {self.pattern!r}: a concatenating rule has one target")


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """torch ``Linear.weight`` [out, in] → NNX ``Linear.kernel`` [in, out]."""
    if w.ndim != 2:
        raise ValueError(f"a Linear weight is 2-D, got shape {w.shape}")
    return w.T


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch ``Conv2d.weight`` [O, I, kh, kw] → NNX ``Conv.kernel`` [kh, kw, I, O]."""
    if w.ndim != 4:
        raise ValueError(f"a Conv2d weight is 4-D, got shape {w.shape}")
    return w.transpose(2, 3, 1, 0)


def chunk(parts: int, axis: int = 0, then: Transform | None = None) -> Transform:
    """Split a fused tensor into ``parts`` equal pieces (then transform each)."""

    def split(w: np.ndarray) -> tuple[np.ndarray, ...]:
        if w.shape[axis] % parts:
            raise ValueError(f"axis {axis} of shape {w.shape} does not split into {parts}")
        pieces = np.split(w, parts, axis=axis)
        return tuple(then(p) if then else p for p in pieces)

    return split


# ---------------------------------------------------------------------------------------
# Conversion


def _path_from_template(template: str, groups: Sequence[str]) -> tuple[str | int, ...]:
    return tuple(int(p) if p.isdigit() else p for p in template.format(*groups).split("."))


def _path_str(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path)


def _concatenate(parts: Sequence[np.ndarray], axis: int) -> np.ndarray | None:
    """The pieces joined along ``axis``, or None where their other dimensions differ."""
    try:
        return np.concatenate(parts, axis=axis)
    except ValueError:
        return None


def convert_tensors(
    tensors: Mapping[str, np.ndarray],
    target_shapes: Mapping[tuple[str | int, ...], tuple[int, ...]],
    rules: Sequence[Rule],
    *,
    ignore: Sequence[str] = (),
    source_prefix: str = "",
    source: str = "<tensors>",
) -> dict[tuple[str | int, ...], np.ndarray]:
    """Fill every path of ``target_shapes`` from ``tensors``; strict (see module doc).

    ``source_prefix`` is a regex allowed (not required) before every key, e.g.
    ``r"(?:bert\\.)?"`` for checkpoints of a model wrapped in a task head.
    ``ignore`` are regexes (search) of source keys deliberately left unused.
    """
    compiled = [(re.compile(source_prefix + r.pattern), r) for r in rules]
    ignored = [re.compile(p) for p in ignore]
    filled: dict[tuple[str | int, ...], np.ndarray] = {}
    filled_from: dict[tuple[str | int, ...], str] = {}
    misfit_targets: set[tuple[str | int, ...]] = set()
    unexpected: list[str] = []
    mismatched: list[str] = []
    # Concatenated targets: path -> (rule, {piece: ("key shape", array)}), joined at the end.
    pieces: dict[tuple[str | int, ...], tuple[Rule, dict[str, tuple[str, np.ndarray]]]] = {}
    for key in sorted(tensors):
        match = rule = None
        for regex, candidate in compiled:
            match = regex.fullmatch(key)
            if match:
                rule = candidate
                break
        if rule is None or match is None:
            if not any(p.search(key) for p in ignored):
                unexpected.append(f"{key} {tuple(tensors[key].shape)}")
            continue
        paths = [_path_from_template(t, match.groups()) for t in rule.targets]
        value = np.asarray(tensors[key])
        try:
            out = rule.transform(value) if rule.transform else value
        except ValueError as err:
            misfit_targets.update(paths)
            mismatched.append(f"{key} {tuple(value.shape)}: {err}")
            continue
        if rule.concat is not None:
            piece = match.group(rule.concat.group + 1)
            got = pieces.setdefault(paths[0], (rule, {}))[1]
            if piece not in rule.concat.pieces:
                unexpected.append(
                    f"{key} {tuple(value.shape)}: piece {piece!r} is not one of "
                    f"{rule.concat.pieces}"
                )
            elif piece in got:
                mismatched.append(
                    f"{key} -> {_path_str(paths[0])}: piece {piece!r} already "
                    f"given by {got[piece][0]}"
                )
            else:
                got[piece] = (f"{key} {tuple(value.shape)}", out)
            continue
        outs = out if isinstance(out, tuple) else (out,)
        if len(outs) != len(paths):
            raise ValueError(
                f"rule {rule.pattern!r} gives {len(outs)} arrays for {len(paths)} targets"
            )
        for path, array in zip(paths, outs, strict=True):
            if path not in target_shapes:
                unexpected.append(f"{key} {tuple(value.shape)} -> no target {_path_str(path)}")
            elif tuple(array.shape) != tuple(target_shapes[path]):
                misfit_targets.add(path)
                mismatched.append(
                    f"{key} {tuple(value.shape)} -> {_path_str(path)}: got {tuple(array.shape)}, "
                    f"expected {tuple(target_shapes[path])}"
                )
            elif path in filled:
                mismatched.append(
                    f"{key} -> {_path_str(path)}: already filled by {filled_from[path]}"
                )
            else:
                filled[path] = array
                filled_from[path] = key
    missing_pieces: dict[tuple[str | int, ...], list[str]] = {}
    for path, (rule, got) in pieces.items():
        absent = [p for p in rule.concat.pieces if p not in got]
        sources = ", ".join(source for source, _ in got.values())
        if path not in target_shapes:
            unexpected.append(f"{sources} -> no target {_path_str(path)}")
        elif absent:
            missing_pieces[path] = absent
        elif path in filled:
            mismatched.append(
                f"{sources} -> {_path_str(path)}: already filled by {filled_from[path]}"
            )
        else:
            parts = [got[p][1] for p in rule.concat.pieces]
            joined = _concatenate(parts, rule.concat.axis)
            expected = tuple(target_shapes[path])
            if joined is None or tuple(joined.shape) != expected:
                misfit_targets.add(path)
                got_shape = "pieces do not join" if joined is None else f"got {joined.shape}"
                mismatched.append(
                    f"{sources} -> {_path_str(path)}: {got_shape}, expected {expected}"
                )
            else:
                filled[path] = joined
    missing = [
        f"{_path_str(p)} {tuple(s)}"
        + (f" (no tensor for {', '.join(missing_pieces[p])})" if p in missing_pieces else "")
        for p, s in target_shapes.items()
        if p not in filled and p not in misfit_targets
    ]
    if missing or unexpected or mismatched:
        raise ConversionError(
            source, missing=sorted(missing), unexpected=unexpected, mismatched=mismatched
        )
    return filled


def load_into_model(
    make_model: Callable[[], nnx.Module],
    tensors: Mapping[str, np.ndarray],
    rules: Sequence[Rule],
    *,
    ignore: Sequence[str] = (),
    source_prefix: str = "",
    source: str = "<tensors>",
    dtype: Any = jnp.float32,
) -> nnx.Module:
    """Build the model abstractly (no random init), convert, and merge the weights.

    Every ``nnx.Param`` is a conversion target; the model must hold no other state.
    Floating-point parameters are cast to ``dtype`` (float32 or bfloat16).
    """
    graphdef, abstract, rest = nnx.split(nnx.eval_shape(make_model), nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise TypeError("load_into_model fills nnx.Param only; the model holds other state")
    flat = nnx.to_flat_state(abstract)
    target_shapes = {tuple(path): tuple(var.get_value().shape) for path, var in flat}
    filled = convert_tensors(
        tensors,
        target_shapes,
        rules,
        ignore=ignore,
        source_prefix=source_prefix,
        source=source,
    )
    leaves = []
    for path, var in flat:
        array = filled[tuple(path)]
        target_dtype = dtype if jnp.issubdtype(var.get_value().dtype, jnp.floating) else None
        leaves.append((path, var.replace(jnp.asarray(array, dtype=target_dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves), rest)


# ---------------------------------------------------------------------------------------
# Reading checkpoints

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Memory-map one safetensors file into numpy arrays (bfloat16 via ml_dtypes)."""
    path = Path(path)
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a safetensors file ({err})") from err
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end - start != int(np.prod(shape)) * dtype.itemsize or end > data.size:
            raise ValueError(f"{path}: tensor {name} byte range does not fit shape {shape}")
        out[name] = data[start:end].view(dtype).reshape(shape)
    return out


# torch.save storage classes → numpy dtypes (the pickle names them by class).
_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype


def _rebuild_tensor(storage, offset, size, stride, *_unused) -> np.ndarray:
    array, _ = storage
    itemsize = array.dtype.itemsize
    if not size:
        return array[offset : offset + 1].reshape(()).copy()
    needed = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
    if needed > array.size:
        raise pickle.UnpicklingError("tensor view runs past the end of its storage")
    view = np.lib.stride_tricks.as_strided(
        array[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return view.copy()


def _rebuild_parameter(data, requires_grad, backward_hooks, *_unused) -> np.ndarray:
    return data


class _TorchZipUnpickler(pickle.Unpickler):
    """Unpickle ``torch.save`` archives without torch, refusing every other global."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._source = source
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return np.dtype(_TORCH_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(
            f"{self._source}: refusing to load {module}.{name}; only torch tensors "
            "and state dicts are read from .bin checkpoints"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) == 5):
            raise pickle.UnpicklingError(f"{self._source}: unsupported persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError(f"{self._source}: storage {key} has no known dtype")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}/data/{key}")
            if len(raw) < numel * dtype.itemsize:
                raise pickle.UnpicklingError(f"{self._source}: storage {key} is truncated")
            self._storages[key] = np.frombuffer(raw, dtype=dtype, count=numel)
        return (self._storages[key], key)


def read_torch_bin(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``torch.save`` zip archive of a state dict into numpy arrays, without torch."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a zip-format torch checkpoint (the legacy pre-1.6 format is not "
            "supported; re-save it with a current torch or as safetensors)"
        )
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {pkl}")
        prefix = pkl[0][: -len("/data.pkl")]
        byteorder = f"{prefix}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        with archive.open(pkl[0]) as f:
            state = _TorchZipUnpickler(f, archive, prefix, str(path)).load()
    if not isinstance(state, Mapping) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return dict(state)


_WEIGHT_FILES = (
    ("model.safetensors", read_safetensors),
    ("model.safetensors.index.json", read_safetensors),
    ("pytorch_model.bin", read_torch_bin),
    ("pytorch_model.bin.index.json", read_torch_bin),
)


def read_checkpoint(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory: safetensors first, then PyTorch .bin;
    sharded checkpoints through their ``*.index.json`` weight map."""
    directory = Path(directory)
    for name, reader in _WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return reader(path)
        weight_map = json.loads(path.read_text())["weight_map"]
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(reader(directory / shard))
        return tensors
    raise FileNotFoundError(
        f"{directory}: no weights found (looked for {', '.join(n for n, _ in _WEIGHT_FILES)})"
    )


def resolve_checkpoint(path_or_repo: str | os.PathLike, *, cache_dir: str | None = None) -> Path:
    """A local checkpoint directory, or a repo id (``org/name``) found in the HF cache.

    The cache is ``cache_dir``, else ``$HF_HUB_CACHE`` read now, else the hub default.
    Never downloads.
    """
    if Path(path_or_repo).is_dir():
        return Path(path_or_repo)
    repo = str(path_or_repo)
    if repo.count("/") != 1 or repo.startswith((".", "/")):
        raise FileNotFoundError(f"{repo}: neither a checkpoint directory nor an org/name repo id")
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE")
    try:
        return Path(
            huggingface_hub.snapshot_download(repo, cache_dir=cache_dir, local_files_only=True)
        )
    except LocalEntryNotFoundError as err:
        where = cache_dir or "the default Hugging Face cache"
        raise FileNotFoundError(
            f"{repo}: not in {where}; download it once with `huggingface-cli download {repo}` "
            "or pass a local directory"
        ) from err


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as a dict."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a Hugging Face checkpoint needs its config")
    return json.loads(path.read_text())


def param_count(model: nnx.Module) -> int:
    """Number of parameter scalars (for logs and tests)."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
