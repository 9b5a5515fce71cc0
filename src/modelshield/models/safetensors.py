"""safetensors: the weights-only format that cannot carry code, read and written with the
``safetensors`` library (Hugging Face), and the conversion behind ``modelshield scan --convert``.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, then the raw bytes: nothing in it is ever executed, so it is the
format modelshield recommends for sharing weights. ``convert_to_safetensors`` turns a PyTorch
checkpoint into one after the checkpoint has been read the safe way (``load_model``'s
``torch.load(weights_only=True)``, itself gated by the static scanner), and reads the result back
to check that every tensor survived bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modelshield._checks import exception_head
from modelshield._io import check_output_paths, hash_file, write_atomic
from modelshield.errors import DataError

__all__ = ["ConversionResult", "convert_to_safetensors", "is_safetensors", "read_safetensors", "to_bytes"]

MAX_HEADER = 100 << 20
"""The safetensors library's own bound on the JSON header (100 MB)."""


def is_safetensors(path: Path) -> bool:
    """True when the file starts like safetensors: a header length within the file, then ``{``.

    Reads the first 9 bytes only, so it is safe on any file.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= min(MAX_HEADER, size - 8) and head[8:9] == b"{"


def read_safetensors(path: Path, *, owner: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors (on the CPU) and the ``__metadata__`` of a safetensors file.

    Raises:
        DataError: the file is not valid safetensors (the library's reason quoted).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DataError(
            f"{owner}: {str(path)!r} must be a valid safetensors file; it cannot be read "
            f"({exception_head(exc)}). Re-export it, e.g. with `modelshield scan --convert`."
        ) from exc
    return tensors, meta


def to_bytes(state: Mapping[str, Tensor], *, metadata: Mapping[str, str] | None = None) -> bytes:
    """A state dict as safetensors bytes (tensors detached, moved to the CPU, made contiguous;
    tensors sharing storage are written as separate copies, which safetensors requires)."""
    from safetensors.torch import save

    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return bytes(save(plain, metadata=dict(metadata) if metadata else None))


@dataclass(frozen=True, kw_only=True, slots=True)
class ConversionResult:
    """What ``convert_to_safetensors`` wrote: the file, its digest, and the source's."""

    source: str
    source_sha256: str
    out: str
    sha256: str
    tensors: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "source_sha256": self.source_sha256, "out": self.out,
                "sha256": self.sha256, "tensors": self.tensors, "bytes": self.bytes}


def convert_to_safetensors(source: str | Path, out: str | Path, *, force: bool = False) -> ConversionResult:
    """Write the weights of a PyTorch checkpoint as safetensors, then check them back bit for bit.

    The source is read by ``load_model``'s safe path: scanned statically first, then
    ``torch.load(weights_only=True)``; pickled objects, TorchScript and anything the scanner
    blocks are refused, never loaded. A ``modelshield-v1`` file keeps its architecture name and
    metadata in the safetensors ``__metadata__`` (``arch``, ``format``), so ``load_model`` can
    rebuild it without ``arch=``.

    Raises:
        UnsafeModelFileError: the source would run code when loaded (or the scanner blocks it).
        DataError: the source holds no state dict of tensors.
        ConfigError: out exists (without ``force``) or cannot be written.
    """
    from modelshield.models.load import FORMAT, read_checkpoint

    owner = "modelshield scan --convert"
    src = Path(source).expanduser()
    dst = Path(out).expanduser()
    check_output_paths([dst], force=force, owner=owner)
    state, arch = read_checkpoint(src, owner=owner)
    odd = [k for k, v in state.items() if v.layout != torch.strided or v.is_quantized]
    if odd:
        raise DataError(
            f"{owner}: every tensor of {str(src)!r} must be dense and not quantized to be written as "
            f"safetensors; {len(odd)} are not (e.g. {odd[:3]}). Convert them first "
            "(t.to_dense(), t.dequantize()) and save the state dict again."
        )
    metadata = {"format": FORMAT, "arch": arch} if arch else {}
    data = to_bytes(state, metadata=metadata)
    write_atomic(dst, data, force=force)
    back, _ = read_safetensors(dst, owner=owner)
    bad = [k for k, v in state.items()
           if k not in back or back[k].dtype != v.dtype or not torch.equal(back[k], v.detach().cpu())]
    if bad or set(back) != set(state):
        dst.unlink(missing_ok=True)
        raise DataError(
            f"{owner}: the safetensors copy of {str(src)!r} must hold the same tensors; {len(bad)} differ "
            f"(e.g. {bad[:3]}). Nothing was kept; report this with the source file's digest."
        )
    return ConversionResult(source=str(src), source_sha256=hash_file(src).hexdigest(), out=str(dst),
                            sha256=hash_file(dst).hexdigest(), tensors=len(state), bytes=len(data))
