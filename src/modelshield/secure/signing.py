"""Sign and verify model files and folders with OpenSSF model signing (``model-signing``).

The bundles are the ones ``model_signing`` itself writes: a Sigstore bundle (v0.3 JSON) holding a
DSSE envelope over an in-toto statement whose predicate (``https://model_signing/signature/v1.0``)
lists every file of the model with its SHA-256 (see the OpenSSF model-signing specification,
https://github.com/sigstore/model-transparency). So ``model_signing verify key ...`` accepts the
bundles :func:`sign_model` writes, and :func:`verify_model` accepts those of ``model_signing sign``.

Three ways to sign (one per call):

- **key** (offline): an elliptic-curve private key in PEM (P-256/384/521); verify with its public
  key. :func:`generate_keypair` makes a P-256 pair (private key file mode 0600).
- **certificate** (offline): the private key plus its X.509 signing certificate and the chain up
  to a root; verify with the root(s) of trust (``certificate_chain``). The signing certificate
  must allow digital signatures (KeyUsage) or code signing (ExtendedKeyUsage).
- **sigstore** (needs network): keyless signing through an OIDC identity, logged in Rekor; verify
  with the expected ``identity`` and ``oidc_issuer``. Not exercised by the offline tests.

Verification is stricter than ``model_signing``'s: besides the signature and every signed file's
digest, any file in the model folder that is not in the signed manifest (outside the paths the
signer chose to ignore), any symbolic link anywhere in the tree (never followed) and any special
file make the result fail, and the result names each such path. The bundle's ``allow_symlinks``
setting is ignored: links are always refused.

Needs the ``signing`` extra: ``pip install 'modelshield[signing]'`` (model-signing and pyopenssl).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from modelshield._io import check_output_paths, hash_file, write_atomic
from modelshield.errors import ConfigError, DataError, IntegrityError, MissingDataError
from modelshield.secure.manifest import check_plain_path, open_regular, walk_tree

__all__ = ["KeyPair", "SigningResult", "VerificationResult", "default_bundle", "generate_keypair",
           "sign_model", "verify_model"]

_INSTALL = "pip install 'modelshield[signing]'"
_MAX_BUNDLE = 64 << 20
Method = Literal["key", "certificate", "sigstore"]


def _model_signing() -> Any:
    """The model_signing package, imported on first use (the optional ``signing`` extra)."""
    try:
        import model_signing
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError as exc:
        raise ConfigError(
            f"modelshield signing: the 'model-signing' package must be installed; importing it failed "
            f"({exc}). Install it with {_INSTALL}."
        ) from None
    return model_signing


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyPair:
    """Paths of a PEM private key (mode 0600) and its PEM public key."""

    private_key: Path
    public_key: Path

    def to_dict(self) -> dict[str, str]:
        return {"private_key": str(self.private_key), "public_key": str(self.public_key)}


@dataclass(frozen=True, kw_only=True, slots=True)
class SigningResult:
    """What was signed: the model, the bundle written, the method and the signed files."""

    path: str
    bundle: str
    method: Method
    files: tuple[str, ...]
    digest: str  # the statement subject's SHA-256 over all file digests (model_signing's model digest)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "bundle": self.bundle, "method": self.method,
                "n_files": len(self.files), "files": list(self.files), "digest": self.digest}


@dataclass(frozen=True, kw_only=True, slots=True)
class VerificationResult:
    """The outcome of :func:`verify_model`; ``ok`` only when every check passed.

    ``reason`` is one line ('' when ok). ``extra``: files present but not signed; ``missing``:
    signed files absent; ``changed``: signed files whose digest differs; ``refused``: symbolic
    links, special or unreadable files found in the tree (never followed or read).
    """

    ok: bool
    path: str
    bundle: str
    method: Method
    reason: str = ""
    extra: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    signed_files: tuple[str, ...] = ()
    digest: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "path": self.path, "bundle": self.bundle, "method": self.method,
                "reason": self.reason, "extra": list(self.extra), "missing": list(self.missing),
                "changed": list(self.changed), "refused": list(self.refused),
                "n_signed_files": len(self.signed_files), "digest": self.digest}


def default_bundle(path: str | Path, *, suffix: str = ".sig") -> Path:
    """The bundle beside a model: ``model.pt`` -> ``model.pt.sig``, folder ``m/`` -> ``m.sig``."""
    p = Path(path).expanduser()
    return p.with_name(p.name + suffix)


# ----------------------------------------------------------------------------------------------
# Keys
# ----------------------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes, *, force: bool) -> None:
    """Write a private key with mode 0600 from the start (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file appeared meanwhile
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_keypair(folder: str | Path, *, name: str = "signing", password: str | None = None,
                     force: bool = False) -> KeyPair:
    """Make an EC P-256 key pair: ``<folder>/<name>.key`` (PKCS#8 PEM, mode 0600) and ``<name>.pub``.

    Args:
        folder: where to write the two files (created when missing).
        name: the files' stem.
        password: encrypt the private key with it (``BestAvailableEncryption``); None: unencrypted.
        force: replace existing files.

    Raises:
        ConfigError: a file exists (without force), or the folder cannot be written.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    base = Path(folder).expanduser()
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"generate_keypair: 'name' must be a plain file stem; got {name!r}. "
                          "Use e.g. 'signing'.")
    priv, pub = base / f"{name}.key", base / f"{name}.pub"
    check_output_paths([priv, pub], force=force, owner="generate_keypair")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password
        else serialization.NoEncryption())
    _write_private(priv, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, enc), force=force)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    write_atomic(pub, key.public_key().public_bytes(pem, spki), force=force)
    return KeyPair(private_key=priv, public_key=pub)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _check_file(path: str | Path, what: str, owner: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{owner}: {what} must be an existing file; got {str(p)!r}. Check the path.")
    return p


def _refused(model: Path) -> list[tuple[str, str]]:
    """(relative path, reason) of every symlink, special or unreadable entry under model."""
    if not model.is_dir():
        return []
    return [(rel, reason) for _, rel, reason in walk_tree(model, ()) if reason is not None]


def _relative_inside(model: Path, other: Path) -> str | None:
    """other's path relative to the model folder, or None when it lies outside."""
    if not model.is_dir():
        return None
    try:
        return other.resolve().relative_to(model.resolve()).as_posix()
    except (ValueError, OSError):
        return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500] + ("..." if len(text) > 500 else "")


def _statement(blob: bytes) -> dict[str, Any]:
    """The in-toto statement inside a bundle's DSSE envelope (NOT authenticated by itself)."""
    data = json.loads(blob)
    payload = json.loads(base64.b64decode(data["dsseEnvelope"]["payload"], validate=True))
    if not isinstance(payload, dict):
        raise ValueError("the DSSE payload is not a JSON object")
    return payload


def _resources(statement: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """name -> (algorithm, hex digest) of the statement's signed resources."""
    out: dict[str, tuple[str, str]] = {}
    for r in statement.get("predicate", {}).get("resources", []):
        out[str(r["name"])] = (str(r["algorithm"]), str(r["digest"]))
    return out


def _subject_digest(statement: dict[str, Any]) -> str:
    try:
        return str(statement["subject"][0]["digest"]["sha256"])
    except (KeyError, IndexError, TypeError):
        return ""


# ----------------------------------------------------------------------------------------------
# Signing
# ----------------------------------------------------------------------------------------------


def sign_model(
    path: str | Path,
    *,
    private_key: str | Path | None = None,
    password: str | None = None,
    certificate: str | Path | None = None,
    certificate_chain: Sequence[str | Path] = (),
    sigstore: bool = False,
    identity_token: str | None = None,
    use_staging: bool = False,
    bundle: str | Path | None = None,
    ignore_paths: Sequence[str | Path] = (),
    ignore_git_paths: bool = True,
    force: bool = False,
) -> SigningResult:
    """Sign a model file or folder; write a model_signing (Sigstore v0.3) bundle.

    Pass ``private_key`` alone (key mode), ``private_key`` with ``certificate`` and
    ``certificate_chain`` (certificate mode), or ``sigstore=True`` (network; ``identity_token``
    skips the browser OIDC flow). Every regular file is hashed with SHA-256 (model_signing's
    ``files`` serialization); ``ignore_paths`` (relative to the model folder), git metadata when
    ``ignore_git_paths`` and the bundle itself, when it lies inside the folder, are left out and
    recorded in the signed statement.

    Args:
        path: the model file or folder.
        bundle: the signature to write (default: :func:`default_bundle`); never overwritten
            without ``force``.

    Returns:
        The signing result (bundle path, method, signed files, model digest).

    Raises:
        ConfigError: no or several modes, unreadable keys, a bad password, an existing bundle.
        DataError: the model holds a symbolic link or a special file (named; remove or replace it).
    """
    owner = "sign_model"
    model = check_plain_path(path, owner=owner, what="the model path")
    modes = [m for m, on in (("key", private_key is not None and certificate is None),
                             ("certificate", certificate is not None), ("sigstore", sigstore)) if on]
    if len(modes) != 1 or (modes == ["certificate"] and private_key is None):
        raise ConfigError(
            f"{owner}: exactly one signing mode must be given; got private_key={private_key!r}, "
            f"certificate={certificate!r}, sigstore={sigstore!r}. Pass private_key=..., or private_key with "
            "certificate (and certificate_chain), or sigstore=True."
        )
    method: Method = modes[0]  # type: ignore[assignment]  # one of the literals above
    out = Path(bundle).expanduser() if bundle is not None else default_bundle(model)
    check_output_paths([out], force=force, owner=owner)
    bad = _refused(model)
    if bad:
        rel, reason = bad[0]
        raise DataError(f"{owner}: a signed model must hold only regular files and folders; {rel!r} is a "
                        f"{reason} ({len(bad)} such path(s)). Replace links by the files they point to, "
                        "or remove them.")
    ms = _model_signing()
    ignored = [str(p) for p in ignore_paths]
    inside = _relative_inside(model, out)
    if inside is not None:
        ignored.append(inside)
    hashing = (ms.hashing.Config().use_file_serialization(hashing_algorithm="sha256")
               .set_ignored_paths(paths=ignored, ignore_git_paths=ignore_git_paths).set_allow_symlinks(False))
    config = ms.signing.Config().set_hashing_config(hashing)
    key = _check_file(private_key, "'private_key'", owner) if private_key is not None else None
    cert = _check_file(certificate, "'certificate'", owner) if certificate is not None else None
    chain = [_check_file(c, "each 'certificate_chain' entry", owner) for c in certificate_chain]
    try:
        if method == "sigstore":
            config.use_sigstore_signer(identity_token=identity_token, use_staging=use_staging)
        elif method == "key":
            config.use_elliptic_key_signer(private_key=key, password=password)
        else:
            config.use_certificate_signer(private_key=key, signing_certificate=cert, certificate_chain=chain)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"{owner}: the {method} signing material must be a readable PEM EC key (and "
                          f"matching certificate); loading it failed ({_one_line(exc)}). Check the files "
                          "and the password.") from None
    with tempfile.TemporaryDirectory(prefix="modelshield-sign-") as tmp:
        target = Path(tmp) / "bundle.sig"
        try:
            config.sign(model, target)
        except (ValueError, OSError) as exc:
            raise DataError(f"{owner}: signing {str(model)!r} failed ({_one_line(exc)}). Check that every "
                            "file can be read.") from None
        blob = target.read_bytes()
    write_atomic(out, blob, force=force)
    statement = _statement(blob)
    return SigningResult(path=str(model), bundle=str(out), method=method,
                         files=tuple(sorted(model.name if n == "." else n for n in _resources(statement))),
                         digest=_subject_digest(statement))


# ----------------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------------


def _recompute_changed(model: Path, signed: dict[str, tuple[str, str]], names: set[str], *,
                       shards: bool) -> list[str]:
    """Names of signed files (of those given) whose current digest differs; sha256/blake2 only."""
    changed = []
    for name in sorted(names):
        algorithm, expected = signed[name]
        base, span = (name.split(":", 1)[0], name.split(":", 1)[1]) if shards and ":" in name else (name, "")
        if algorithm not in ("sha256", "blake2"):
            continue
        target = model if base == "." or not model.is_dir() else model / base
        digest = hashlib.sha256() if algorithm == "sha256" else hashlib.blake2b()
        try:
            if span:
                with open(target, "rb") as fh:
                    start, end = (int(x) for x in span.split(":"))
                    fh.seek(start)
                    left = end - start
                    while left > 0 and (chunk := fh.read(min(left, 1 << 20))):
                        digest.update(chunk)
                        left -= len(chunk)
            else:
                hash_file(target, digest)
        except (OSError, ValueError):
            changed.append(base)
            continue
        if digest.hexdigest() != expected:
            changed.append(base)
    return sorted(set(changed))


def verify_model(
    path: str | Path,
    *,
    bundle: str | Path | None = None,
    public_key: str | Path | None = None,
    certificate_chain: Sequence[str | Path] | None = None,
    identity: str | None = None,
    oidc_issuer: str | None = None,
    use_staging: bool = False,
    ignore_paths: Sequence[str | Path] = (),
) -> VerificationResult:
    """Check a model against its bundle: signature, every signed digest, no unsigned file, no link.

    Give ``public_key`` (key mode), ``certificate_chain`` (certificate mode: the trusted root(s);
    an empty sequence means the operating system's roots) or ``identity`` and ``oidc_issuer``
    (Sigstore, needs network).

    Returns:
        A result with ``ok`` and, when it fails, one-line ``reason`` plus the offending paths.
        Invalid signatures, wrong keys, tampered bundles and tampered models are results, not errors.

    Raises:
        MissingDataError / DataError: the model or bundle does not exist, the model is a symlink.
        ConfigError: no or several verification modes, an unreadable key or certificate file.
    """
    owner = "verify_model"
    model = check_plain_path(path, owner=owner, what="the model path")
    modes = [m for m, on in (("key", public_key is not None), ("certificate", certificate_chain is not None),
                             ("sigstore", identity is not None or oidc_issuer is not None)) if on]
    if len(modes) != 1 or (modes == ["sigstore"] and not (identity and oidc_issuer)):
        raise ConfigError(
            f"{owner}: exactly one verification mode must be given; got public_key={public_key!r}, "
            f"certificate_chain={certificate_chain!r}, identity={identity!r}, oidc_issuer={oidc_issuer!r}. "
            "Pass public_key=..., or certificate_chain=[root.pem], or identity=... with oidc_issuer=...."
        )
    method: Method = modes[0]  # type: ignore[assignment]  # one of the literals above
    sig = Path(bundle).expanduser() if bundle is not None else default_bundle(model)
    try:
        with open_regular(sig, follow_symlinks=True) as fh:
            blob = fh.read(_MAX_BUNDLE + 1)
    except FileNotFoundError:
        raise MissingDataError(f"{owner}: the signature bundle must exist; got {str(sig)!r}, which does not. "
                               "Sign the model first ('modelshield sign') or pass --bundle.") from None
    except OSError as exc:
        raise DataError(f"{owner}: cannot read the bundle {str(sig)!r} ({exc.strerror or exc}). "
                        "Check the path.") from None

    def failed(reason: str, refused: tuple[str, ...] = ()) -> VerificationResult:
        return VerificationResult(ok=False, path=str(model), bundle=str(sig), method=method, reason=reason,
                                  refused=refused)

    if len(blob) > _MAX_BUNDLE:
        return failed(f"the bundle is larger than {_MAX_BUNDLE >> 20} MiB")
    try:
        statement = _statement(blob)
        serialization = statement["predicate"]["serialization"]
        signed = _resources(statement)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        return failed(f"the bundle is not a model_signing bundle ({_one_line(exc)})")
    ms = _model_signing()
    config = ms.verifying.Config()
    key = _check_file(public_key, "'public_key'", owner) if public_key is not None else None
    roots = [_check_file(c, "each 'certificate_chain' entry", owner) for c in certificate_chain or ()]
    try:
        if method == "key":
            config.use_elliptic_key_verifier(public_key=key)
        elif method == "certificate":
            config.use_certificate_verifier(certificate_chain=roots)
        else:
            config.use_sigstore_verifier(identity=identity, oidc_issuer=oidc_issuer, use_staging=use_staging)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"{owner}: the {method} verification material must be a readable PEM EC public "
                          f"key or certificate file; loading it failed ({_one_line(exc)}). Check the file."
                          ) from None
    ignored = [str(p) for p in ignore_paths]
    inside = _relative_inside(model, sig)
    if inside is not None:
        ignored.append(inside)
    try:
        method_name = serialization.get("method", "files")
        algorithm = serialization.get("hash_type", "sha256")
        hashing = ms.hashing.Config()
        if method_name == "shards":
            hashing.use_shard_serialization(hashing_algorithm=algorithm,
                                            shard_size=int(serialization["shard_size"]))
        else:
            hashing.use_file_serialization(hashing_algorithm=algorithm)
        # git paths the signer ignored are in the signed statement's ignore_paths; model_signing adds them
        hashing.set_ignored_paths(paths=ignored, ignore_git_paths=False).set_allow_symlinks(False)
        config.set_hashing_config(hashing)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return failed(f"the bundle's serialization is not supported ({_one_line(exc)})")
    refused = tuple(f"{rel} ({reason})" for rel, reason in _refused(model))
    error = ""
    with tempfile.TemporaryDirectory(prefix="modelshield-verify-") as tmp:
        copy = Path(tmp) / "bundle.sig"  # verify exactly the bytes parsed above
        copy.write_bytes(blob)
        try:
            # model_signing print()s a warning for legacy bundles; the library never prints (this swaps
            # sys.stdout for the call, so other threads printing meanwhile lose that output)
            with contextlib.redirect_stdout(io.StringIO()):
                config.verify(model, copy)
        except Exception as exc:  # model_signing and cryptography raise many types for bad bundles
            error = _one_line(exc) or type(exc).__name__
    digest = _subject_digest(statement)
    shards = serialization.get("method") == "shards"
    hashing_error = (error.startswith("Signature mismatch")
                     or (bool(refused) and error.startswith("Cannot use")))
    if error and not hashing_error:
        reason = f"signature verification failed: {error}"
        if refused:
            reason += f"; refused paths: {', '.join(refused)}"
        return failed(reason, refused)
    # model_signing hashes the files only after the signature checked out: the statement is authentic.
    present: set[str] = set()
    if model.is_dir():
        ignore_all = list(serialization.get("ignore_paths", [])) + ignored
        for _, rel, why in walk_tree(model, tuple(str(p).rstrip("/") for p in ignore_all if p)):
            if why is None:
                present.add(rel)
    signed_paths = {n.split(":", 1)[0] if shards else n for n in signed}
    if model.is_dir():
        extra = tuple(sorted(present - signed_paths))
        missing = tuple(sorted(signed_paths - present))
    else:
        extra, missing = (), ()
    candidates = {n for n in signed if (n.split(":", 1)[0] if shards else n) not in missing}
    changed = tuple(_recompute_changed(model, signed, candidates, shards=shards)) if error else ()
    changed = tuple(model.name if c == "." else c for c in changed)  # a single file is "." when signed
    problems = [f"{label}: {', '.join(names)}" for label, names in (
        ("unsigned files", extra), ("missing files", missing), ("changed files", changed),
        ("refused paths", refused)) if names]
    if error and not problems:
        problems.append(error)
    ok = not error and not problems
    return VerificationResult(ok=ok, path=str(model), bundle=str(sig), method=method,
                              reason="; ".join(problems), extra=extra, missing=missing, changed=changed,
                              refused=refused,
                              signed_files=tuple(sorted(model.name if n == "." else n for n in signed)),
                              digest=digest)


def require_valid(result: VerificationResult) -> VerificationResult:
    """Return result when ok, else raise IntegrityError naming the model, the bundle and the reason."""
    if result.ok:
        return result
    raise IntegrityError(f"signature check: {result.path!r} must match its signature {result.bundle!r}; "
                         f"{result.reason}. Do not load it; re-sign it only if you trust its content.")
