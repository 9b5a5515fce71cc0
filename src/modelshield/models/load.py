"""Safe model files: save a state dict with its architecture name, load without running code from it.

A ``modelshield-v1`` file is a ``torch.save`` of a plain dict::

    {"format": "modelshield-v1", "arch": "<zoo architecture>", "state_dict": {...}, "meta": {...}}

that loads with ``torch.load(weights_only=True)``: tensors and primitive containers only, so
opening a file never runs code from it. A bare state dict loads the same way (with ``arch=``).

Refused, because opening them can run code the file brings along:

* a pickled ``nn.Module`` (``torch.save(model)``): unpickling can call any Python function;
* a TorchScript archive (``torch.jit.save``), unless the caller passes ``trust_torchscript=True``
  (CLI: ``--trust-torchscript``): ``torch.jit.load`` runs the archive's compiled code while
  loading (a scripted module's ``__setstate__`` can create or overwrite files, e.g. through
  ``torch.from_file(..., shared=True)``), before anyone can look at the result. TorchScript is
  recognised by content (a zip holding ``code/`` or ``constants.pkl``), whatever the file is
  called, before anything in it is read by torch.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modelshield._checks import exception_head
from modelshield._io import hash_file
from modelshield.errors import ConfigError, DataError, MissingDataError, ModelCapabilityError

__all__ = [
    "FORMAT",
    "UnsafeModelFileError",
    "check_before_load",
    "confirm_unchanged",
    "file_sha256",
    "is_torchscript",
    "load_model",
    "read_checkpoint",
    "save_model",
    "weights_sha256",
]

FORMAT = "modelshield-v1"

_SAFE_ALTERNATIVES = (
    "Save the weights instead: modelshield.models.load.save_model(model, path, arch=...) "
    "(or torch.save(model.state_dict(), path) and load with arch=...)"
)


class UnsafeModelFileError(DataError, ModelCapabilityError):
    """A model file would run code while loading (pickled Python objects, or TorchScript not trusted).

    It is both a DataError (the file cannot be read safely) and a ModelCapabilityError (the model
    is not in a form that can be loaded safely), so either ``except`` clause catches it.
    """


MAX_LISTED = 3
"""Other finding codes named in the refusal; ``modelshield scan PATH`` lists every finding."""


def _trust_fix(blocking: Sequence[Any]) -> str:
    """How to load anyway, for the kinds of finding that block."""
    types = sorted({f.callable for f in blocking if f.code == "skops.type.denied" and f.callable})
    if types and len(types) == len(blocking):
        return (f"if you trust these types, pass skops_trusted={types!r} (CLI: --skops-trust "
                f"{','.join(types)})")
    return ("load it only if you trust its source: trust_pickle=True (CLI: --trust-pickle), or "
            "trust_torchscript / trust_export for those formats")


def check_before_load(path: Path, *, owner: str, trusted: bool = False,
                     allow: Sequence[str] = ()) -> dict[str, Any]:
    """The gate every model file passes before anything reads it: the trust policy, then the scan.

    When a trust policy is configured (``$MODELSHIELD_TRUST_POLICY``, see
    ``modelshield.secure.policy``) and requires signatures, the file must verify against a
    trusted key first (``IntegrityError`` otherwise; no opt-in loads an unsigned file). Then the
    file is scanned statically (``modelshield.secure.scan``).

    A file with blocking findings (a pickle importing a callable outside the allow-list, an
    archive anomaly, a Keras Lambda layer, ONNX external data leaving the folder, ...) is refused
    unless ``trusted``: the caller's explicit opt-in for files that run code by design
    (``trust_pickle``, ``trust_torchscript``, ``trust_export``). ``allow`` names callables or
    types the user trusts explicitly (``skops_trusted``): findings about exactly those do not
    block. Returns the summary for the model's provenance: ``{"blocked", "findings", "formats",
    "seconds", "signature", "allowed", "sha256"}`` (signature: ``check_trusted``'s answer; sha256:
    the file's digest before the checks, for ``confirm_unchanged`` after the load).

    Raises:
        IntegrityError: the trust policy requires a signature and the file's does not verify.
        UnsafeModelFileError: the scan blocks the file and ``trusted`` is False; the message
            quotes the first findings and names ``modelshield scan`` for the rest.
    """
    from modelshield.secure.policy import TrustPolicy, check_trusted
    from modelshield.secure.scan import scan_path

    digest = file_sha256(path)  # before the checks: confirm_unchanged compares after the load
    policy = TrustPolicy.from_env()
    signature = check_trusted(path, policy)
    report = scan_path(path)
    allowed = set(allow)
    blocking = [f for f in report.findings if f.blocking and f.callable not in allowed]
    summary: dict[str, Any] = {
        "blocked": bool(blocking), "findings": len(report.findings), "formats": dict(report.formats),
        "seconds": round(report.seconds, 4), "signature": signature, "sha256": digest,
        "allowed": sorted({f.callable for f in report.findings if f.blocking and f.callable in allowed}),
    }
    if blocking and not trusted:
        first = blocking[0]
        where = ("!".join(first.location.members) + " " if first.location.members else "") + (
            f"at byte {first.offset}" if first.offset is not None else "")
        others = sorted({f.code for f in blocking[1:]} - {first.code})[:MAX_LISTED]
        also = f"; also {', '.join(others)}" if others else ""
        raise UnsafeModelFileError(
            f"{owner}: {str(path)!r} must pass the static scan before it is loaded; the scanner blocks "
            f"it ({len(blocking)} finding{'s' if len(blocking) > 1 else ''}): {first.message} "
            f"[{first.code}{' ' + where.strip() if where.strip() else ''}]{also}. Run `modelshield scan "
            f"{path}` for every finding; {_trust_fix(blocking)}."
        )
    return summary


def confirm_unchanged(path: Path, checked: dict[str, Any] | None, *, owner: str) -> None:
    """Refuse a model whose file changed between its checks and its load.

    The loaders open the file again after ``check_before_load`` has read it; a file swapped in
    between (a race an attacker with write access to the folder can try) would be loaded without
    its checks. Re-hashing after the load and comparing with the digest taken before the checks
    closes that window for every format that loads without running code.

    Raises:
        IntegrityError: the file's SHA-256 after the load differs from the one before the checks.
    """
    if checked is None or "sha256" not in checked:
        return
    now = file_sha256(path)
    if now != checked["sha256"]:
        from modelshield.errors import IntegrityError

        raise IntegrityError(
            f"{owner}: {str(path)!r} must not change while it is checked and loaded; its SHA-256 was "
            f"{checked['sha256'][:16]}... before the checks and {now[:16]}... after the load. Nothing "
            "was kept; make sure nothing else writes to the model file, then load it again."
        )


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes.

    Raises:
        MissingDataError: the file does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingDataError(f"file_sha256: the file must exist; got {str(p)!r}. Check the path.")
    return str(hash_file(p).hexdigest())


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict: stable provenance of its weights.

    Each entry contributes its key, dtype, shape and raw bytes, in sorted key order, so the
    digest depends only on the values (not on the device, memory layout or file format).

    Args:
        module: the model.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        if not isinstance(value, Tensor):  # extra state set via get_extra_state()
            digest.update(repr(value).encode())
            continue
        t = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{t.dtype}{tuple(value.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _plain_meta(value: object, where: str) -> Any:
    """A copy of value made of plain str/int/float/bool/None, lists and str-keyed dicts.

    Subclasses (e.g. ``torch.__version__``, a ``str`` subclass) become their base type, because
    ``torch.load(weights_only=True)`` refuses any class it does not know.
    """
    if value is None or type(value) is bool:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, list | tuple):
        return [_plain_meta(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {str(k): _plain_meta(item, f"{where}[{k!r}]") for k, item in value.items()}
    raise ConfigError(
        f"save_model: 'meta' must hold only str, int, float, bool, None, lists and str-keyed dicts; "
        f"got {type(value).__name__} at {where}. Convert it, e.g. str(value) or tensor.tolist()."
    )


def save_model(
    module: nn.Module,
    path: str | Path,
    *,
    arch: str,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Save a model's weights as a ``modelshield-v1`` file that loads without unpickling code.

    The file is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so readers never see a half-written file. Tensors are stored on the CPU.

    Args:
        module: the model; it is neither moved nor changed.
        path: destination file (conventionally ``.pt``); its folder is created if needed.
        arch: the zoo architecture that ``load_model`` rebuilds, e.g. ``"lenet-28"`` (see
            ``modelshield.zoo.ARCHS``).
        meta: JSON-like metadata stored in the file (accuracy, provenance, ...).
        overwrite: replace an existing file; otherwise an existing file is an error.

    When an audit log is configured (``$MODELSHIELD_AUDIT_LOG``), a ``save-model`` record names
    the file's digest, the architecture and meta (the training recipe and data digests the
    callers store there).

    Returns:
        The SHA-256 hex digest of the written file.

    Raises:
        ConfigError: the file exists and overwrite is False, arch is unknown, or meta holds
            values other than JSON-like primitives.

    Example:
        digest = save_model(net, "net.pt", arch="cnn-8x8", meta={"note": "fine-tuned"})
    """
    from modelshield.models.archs import check_arch

    check_arch(arch, owner="save_model")
    plain_meta = _plain_meta({} if meta is None else meta, "meta")
    target = Path(path).expanduser()
    if target.exists() and not overwrite:
        raise ConfigError(
            f"save_model: 'path' must not exist unless overwrite=True; got {str(target)!r}, which "
            "exists. Pass overwrite=True (CLI: --force) to replace it, or choose another path."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "arch": arch,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "meta": plain_meta,
    }
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    digest = file_sha256(target)
    from modelshield.secure.audit import Artifact, log_event

    log_event(action="save-model", artifact=Artifact(name=str(target.resolve()), sha256=digest),
              details={"arch": arch, "format": FORMAT, "meta": plain_meta, "code": _code_version()})
    return digest


def _code_version() -> str:
    from importlib import metadata

    try:
        return f"modelshield {metadata.version('modelshield')}"
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "modelshield (not installed)"


def is_torchscript(path: Path) -> bool:
    """True when the file is a zip archive laid out like TorchScript (has code/ or constants.pkl).

    Reads only the zip's table of contents, never a member, so it is safe on any file.
    """
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(
        n.split("/")[-1] == "constants.pkl" or "/code/" in n or n.startswith("code/") for n in names
    )


def _refuse_torchscript(path: Path) -> UnsafeModelFileError:
    """The error for a TorchScript archive that the caller did not say it trusts."""
    return UnsafeModelFileError(
        f"load_model: {str(path)!r} must be a weights file (modelshield-v1 or a state dict) unless "
        "TorchScript is trusted; it is a TorchScript archive, and loading TorchScript runs code from "
        "the file while loading (a scripted __setstate__ can write files, for example), before modelshield "
        "can check anything. Re-save it as weights with modelshield.models.load.save_model(model, "
        "path, arch=...) (or torch.save(model.state_dict(), path) and pass arch=), or, only if you "
        "trust where the file came from, pass trust_torchscript=True (CLI: --trust-torchscript)."
    )


def _load_torchscript(path: Path) -> nn.Module:
    """torch.jit.load on the CPU, turning torch's errors into DataError."""
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 deprecates TorchScript; the user chose this format, so the warning
            # is not actionable here.
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning
            )
            module: nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]  # untyped in torch
                str(path), map_location="cpu"
            )
    except (RuntimeError, OSError, ValueError) as exc:
        raise DataError(
            f"load_model: {str(path)!r} looks like a TorchScript archive but cannot be loaded "
            f"({exception_head(exc)}). Re-export it with "
            "torch.jit.script(model).save(path)."
        ) from exc
    return module


def _state_dict_of(obj: object) -> dict[str, Tensor] | None:
    """obj as a state dict (all values tensors), or the 'state_dict' entry of a checkpoint dict."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            return dict(obj)
        inner = obj.get("state_dict")
        if isinstance(inner, Mapping) and "format" not in obj:
            return _state_dict_of(inner)
    return None


def _build_and_fill(
    arch: str, state: dict[str, Tensor], path: Path, module: nn.Module | None = None
) -> nn.Module:
    """Build the zoo architecture (or take module) and load state into it (strict), or raise DataError."""
    from modelshield.models.archs import build

    module = build(arch) if module is None else module
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise DataError(
            f"load_model: the weights in {str(path)!r} must match architecture {arch!r}; they do "
            f"not ({detail}). Pass the arch the weights were trained with."
        ) from exc
    return module


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    trust_torchscript: bool = False,
    into: nn.Module | None = None,
    scan: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model file without running code from it.

    Accepted formats:

    * ``modelshield-v1`` (written by :func:`save_model`): the file names its architecture.
    * a bare state dict (``torch.save(model.state_dict(), path)``, or a checkpoint dict with a
      ``"state_dict"`` entry): pass ``arch=`` naming a zoo architecture.
    * a TorchScript archive (``torch.jit.script(model).save(path)``), only with
      ``trust_torchscript=True``; ``arch`` is then ignored.

    Everything except TorchScript is read with ``torch.load(weights_only=True)``. A pickled
    ``nn.Module`` (``torch.save(model)``) is refused rather than unpickled. A TorchScript archive
    is refused by default, recognised by its content before torch opens it: ``torch.jit.load``
    runs the archive's compiled code while loading (a scripted ``__setstate__``) and whenever
    the module is called, so it is a program, to be run only when you trust its source.

    Args:
        path: the model file.
        arch: zoo architecture for a bare state dict; for a modelshield-v1 file it must match
            the stored name when given.
        trust_torchscript: load a TorchScript archive with ``torch.jit.load`` (running its code);
            pass True only for files from a source you trust.
        into: a module built by the caller (e.g. from the user's ``package.module:function``)
            to fill with a bare state dict instead of a zoo architecture; ``arch`` is then only
            the label recorded in the metadata. Refused for modelshield-v1 files (they name
            their architecture).
        scan: scan the file statically first (``check_before_load``) and refuse it on blocking
            findings unless ``trust_torchscript``; False only when the caller has just scanned
            this very file.

    Returns:
        ``(module, meta)``: the module on the CPU in eval mode, and the stored metadata plus
        ``"sha256"`` (of the file), ``"format"``, ``"arch"`` (None for TorchScript) and ``"path"``.

    Raises:
        MissingDataError: the file does not exist.
        UnsafeModelFileError: the file holds pickled Python objects, or is TorchScript and
            trust_torchscript is False (a DataError and a ModelCapabilityError); the message
            lists the safe alternatives.
        ConfigError: a bare state dict without ``arch``, an unknown ``arch``, or an ``arch``
            that contradicts the file.
        DataError: the file is corrupt, or the weights do not fit the architecture.

    Example:
        module, meta = load_model("net.pt")
        module, meta = load_model("weights.pt", arch="lenet-28")
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingDataError(
            f"load_model: the model file must exist; got {str(p)!r}, which is "
            f"{'a folder' if p.is_dir() else 'missing'}. Check the path, or use a zoo name "
            "(`modelshield zoo list`)."
        )
    if not isinstance(trust_torchscript, bool):
        raise ConfigError(
            f"load_model: 'trust_torchscript' must be a bool; got {trust_torchscript!r}. Pass "
            "True only for TorchScript files from a source you trust."
        )
    torchscript = is_torchscript(p)  # decided from the zip's table of contents, before torch reads it
    if torchscript and not trust_torchscript:
        raise _refuse_torchscript(p)
    scanned = check_before_load(p, owner="load_model", trusted=trust_torchscript) if scan else None
    digest = scanned["sha256"] if scanned is not None else file_sha256(p)
    base_meta: dict[str, Any] = {"sha256": digest, "path": str(p.resolve())}
    if scanned is not None:
        base_meta["scan"] = scanned
    if torchscript:
        module = _load_torchscript(p)
        confirm_unchanged(p, scanned, owner="load_model")
        return module.eval(), {**base_meta, "format": "torchscript", "arch": None}

    state, stored_arch, meta, fmt = _read_weights(p, owner="load_model")
    confirm_unchanged(p, scanned, owner="load_model")
    if stored_arch is not None:
        if (arch is not None and arch != stored_arch) or into is not None:
            arch = arch if arch is not None else type(into).__name__
            raise ConfigError(
                f"load_model: 'arch' must match the architecture stored in {str(p)!r} "
                f"({stored_arch!r}); got {arch!r}. Omit arch= for modelshield-v1 files."
            )
        from modelshield.models.archs import check_arch

        check_arch(stored_arch, owner="load_model")
        module = _build_and_fill(stored_arch, state, p)
        return module.eval(), {**meta, **base_meta, "format": fmt, "arch": stored_arch}
    if into is not None:
        module = _build_and_fill(arch or type(into).__name__, state, p, module=into)
        return module.eval(), {**base_meta, "format": fmt, "arch": arch}
    if arch is None:
        from modelshield.models.archs import ARCHS

        raise ConfigError(
            f"load_model: 'arch' must be given for a bare state dict; got None for {str(p)!r}. "
            f"Pass arch= one of {', '.join(map(repr, sorted(ARCHS)))}, or re-save the model with "
            "save_model(..., arch=...) so the file names its architecture."
        )
    from modelshield.models.archs import check_arch

    check_arch(arch, owner="load_model")
    module = _build_and_fill(arch, state, p)
    return module.eval(), {**base_meta, "format": fmt, "arch": arch}


def _read_weights(p: Path, *, owner: str) -> tuple[dict[str, Tensor], str | None, dict[str, Any], str]:
    """The state dict of a weights file read without running code, with the architecture it names.

    A safetensors file (by content) is read with the safetensors library; its ``__metadata__``
    names the architecture when it was converted from a modelshield-v1 file. Anything else is
    read with ``torch.load(weights_only=True)``: a modelshield-v1 dict (architecture and meta
    stored), a bare state dict or a checkpoint dict with a ``"state_dict"`` entry (no
    architecture). Returns ``(state, arch or None, meta, format)``.

    Raises:
        UnsafeModelFileError: the file holds pickled Python objects.
        DataError: the file is corrupt or holds no state dict of tensors.
    """
    from modelshield.models.safetensors import is_safetensors, read_safetensors

    if is_safetensors(p):
        tensors, st_meta = read_safetensors(p, owner=owner)
        st_arch = st_meta.get("arch") if st_meta.get("format") == FORMAT else None
        return tensors, st_arch or None, {}, "safetensors"
    try:
        with warnings.catch_warnings():  # torch's own deprecation noise while rebuilding old storages
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        marker = "Unsupported global: GLOBAL "
        if marker in text:
            name = text.split(marker, 1)[1].split()[0]
            what = f"pickled Python objects ({name})"
        else:
            what = "data that is not a plain tensor file (corrupt, or pickled Python objects)"
        raise UnsafeModelFileError(
            f"{owner}: {str(p)!r} must contain only tensors and plain containers; it holds "
            f"{what}, which modelshield refuses to unpickle because that can run arbitrary code. "
            f"{_SAFE_ALTERNATIVES}."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        head = exception_head(exc)
        raise DataError(
            f"{owner}: {str(p)!r} must be a torch.save file, a safetensors file or a TorchScript "
            f"archive; it cannot be read ({head}). Re-save or re-download the file."
        ) from exc

    if isinstance(obj, Mapping) and "format" in obj:
        fmt = obj.get("format")
        if fmt != FORMAT:
            raise DataError(
                f"{owner}: {str(p)!r} has format {fmt!r}; must be {FORMAT!r}. Re-save it with "
                "modelshield.models.load.save_model."
            )
        stored_arch = obj.get("arch")
        state = _state_dict_of(obj.get("state_dict"))
        meta = obj.get("meta") or {}
        if not isinstance(stored_arch, str) or state is None or not isinstance(meta, dict):
            raise DataError(
                f"{owner}: {str(p)!r} must hold 'arch' (str), 'state_dict' (tensors) and 'meta' "
                "(dict); it is malformed. Re-save it with modelshield.models.load.save_model."
            )
        return state, stored_arch, meta, FORMAT
    state = _state_dict_of(obj)
    if state is None:
        raise DataError(
            f"{owner}: {str(p)!r} must hold a modelshield-v1 dict or a state dict of tensors; "
            f"got {type(obj).__name__}. {_SAFE_ALTERNATIVES}."
        )
    return state, None, {}, "state_dict"


def read_checkpoint(path: str | Path, *, owner: str) -> tuple[dict[str, Tensor], str | None]:
    """The state dict of a weights file (and its architecture name when the file records one),
    read without running code: TorchScript is refused, pickles are refused (see ``load_model``).

    Raises:
        MissingDataError, UnsafeModelFileError, DataError: as ``load_model``.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingDataError(
            f"{owner}: the model file must exist; got {str(p)!r}, which is "
            f"{'a folder' if p.is_dir() else 'missing'}. Check the path."
        )
    if is_torchscript(p):
        raise _refuse_torchscript(p)
    check_before_load(p, owner=owner)
    state, arch, _, _ = _read_weights(p, owner=owner)
    return state, arch
