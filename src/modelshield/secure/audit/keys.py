"""Ed25519 keys and signed checkpoints (signed tree heads) of the audit log.

A checkpoint commits to the whole log as it stood: its origin (the log's random id), tree size,
Merkle root hash and time. The signed body is a short text in the spirit of the C2SP
``tlog-checkpoint`` format used by Go's sumdb and Sigstore's Rekor::

    modelshield-audit/<log id>
    <tree size>
    <base64 root hash>
    <UTC time>

signed with Ed25519 (RFC 8032) through the ``cryptography`` package. The private key is written by
:func:`generate_key` as an unencrypted PKCS#8 PEM file with mode 0600 (created exclusively, never
overwritten), the public key beside it as ``<key>.pub`` (SubjectPublicKeyInfo PEM). Verification
needs only the public key, which should also be kept (or published) away from the log: whoever
can rewrite the log *and* its public key file can forge everything.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from modelshield.errors import ConfigError, DataError

__all__ = [
    "Checkpoint",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "public_key_path",
    "sign_checkpoint",
    "verify_checkpoint",
]


def public_key_path(key: str | Path) -> Path:
    """Where the public key of private key file ``key`` lives: the same name with suffix ``.pub``."""
    p = Path(key)
    if p.suffix == ".pub":
        raise ConfigError(f"audit: the signing key must be the private key file; got {str(p)!r}, a .pub "
                          "file. "
                          "Pass the private key (the public one is found beside it).")
    return p.with_suffix(".pub")


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(path: str | Path) -> tuple[Path, Path]:
    """Create a new Ed25519 key: ``path`` (mode 0600, must not exist) and ``path`` with suffix .pub.

    Raises:
        ConfigError: either file exists or cannot be created.
    """
    priv_path, pub_path = Path(path), public_key_path(path)
    for p in (priv_path, pub_path):
        if p.exists() or p.is_symlink():
            raise ConfigError(f"audit init: the key file must not exist yet; got {str(p)!r}, which exists. "
                              "Choose another --key path, or reuse the log that key belongs to.")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        _write_new(priv_path, pem, 0o600)
        _write_new(pub_path, pub, 0o644)
    except OSError as exc:
        raise ConfigError(f"audit init: the key files must be writable; got {str(priv_path)!r} "
                          f"({exc.strerror or exc}). Choose another --key path.") from exc
    return priv_path, pub_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask must not loosen (or tighten) what we ask for
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PEM). Raises ConfigError when missing, unreadable or not Ed25519."""
    try:
        data = Path(path).read_bytes()
        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError("audit: the signing key must be a readable Ed25519 PEM private key; got "
                          f"{str(path)!r} "
                          f"({type(exc).__name__}: {exc}). Pass --key (or MODELSHIELD_AUDIT_KEY) naming "
                          "the key "
                          "`modelshield audit init` wrote.") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"audit: the signing key must be Ed25519; got a {type(key).__name__} in "
                          f"{str(path)!r}. "
                          "Use the key `modelshield audit init` wrote.")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key (PEM). Raises ConfigError when missing, unreadable or not Ed25519."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError("audit: the public key must be a readable Ed25519 PEM public key; got "
                          f"{str(path)!r} "
                          f"({type(exc).__name__}: {exc}). Pass --public-key naming the .pub file written by "
                          "`modelshield audit init`.") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"audit: the public key must be Ed25519; got a {type(key).__name__} in "
                          f"{str(path)!r}. "
                          "Use the .pub file `modelshield audit init` wrote.")
    return key


@dataclass(frozen=True, kw_only=True, slots=True)
class Checkpoint:
    """A signed tree head: the log ``origin`` had ``tree_size`` records with Merkle root ``root_hash``."""

    origin: str
    tree_size: int
    root_hash: str  # hex
    time: str
    key_id: str
    signature: str  # base64 Ed25519 signature over body()

    def body(self) -> bytes:
        return checkpoint_body(self.origin, self.tree_size, self.root_hash, self.time)

    def to_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "tree_size": self.tree_size, "root_hash": self.root_hash,
                "time": self.time, "key_id": self.key_id, "signature": self.signature}

    @classmethod
    def from_dict(cls, data: object) -> Checkpoint:
        """A checkpoint from its to_dict() form (e.g. a saved ``audit checkpoint --json``); ConfigError
        when a field is missing or of the wrong type. The signature is not checked here."""
        fields = {"origin": str, "tree_size": int, "root_hash": str, "time": str, "key_id": str,
                  "signature": str}
        if not isinstance(data, dict) or any(not isinstance(data.get(k), t) for k, t in fields.items()):
            raise ConfigError(f"audit: a checkpoint must be a JSON object with {', '.join(fields)}; got "
                              f"{str(data)[:200]!r}. Save one with `modelshield audit checkpoint --json`.")
        return cls(**{k: data[k] for k in fields})


def checkpoint_body(origin: str, tree_size: int, root_hash: str, time: str) -> bytes:
    """The exact bytes a checkpoint signature covers (see the module docstring)."""
    try:
        root_b64 = base64.b64encode(bytes.fromhex(root_hash)).decode("ascii")
    except ValueError as exc:
        raise DataError(f"audit: a checkpoint root hash must be hex; got {root_hash!r}.") from exc
    return f"{origin}\n{tree_size}\n{root_b64}\n{time}\n".encode()


def sign_checkpoint(key: Ed25519PrivateKey, *, origin: str, tree_size: int, root_hash: str,
                    time: str) -> Checkpoint:
    """Sign a tree head with an Ed25519 private key."""
    signature = key.sign(checkpoint_body(origin, tree_size, root_hash, time))
    return Checkpoint(origin=origin, tree_size=tree_size, root_hash=root_hash, time=time,
                      key_id=key_id(key.public_key()), signature=base64.b64encode(signature).decode("ascii"))


def verify_checkpoint(checkpoint: Checkpoint, public: Ed25519PublicKey) -> bool:
    """True when the checkpoint's signature verifies with the public key (pure; False on any malformation)."""
    try:
        signature = base64.b64decode(checkpoint.signature, validate=True)
        public.verify(signature, checkpoint.body())
    except (InvalidSignature, ValueError, DataError):
        return False
    return True
