"""Trust policy: which model files must carry a valid signature before they are loaded.

A :class:`TrustPolicy` comes from the configuration (YAML, TOML or JSON; a top-level ``trust``
section is used when present)::

    trust:
      require_signature: true
      public_keys: [keys/release.pub]        # relative to the config file's folder
      bundle_suffix: .sig                    # model.pt -> model.pt.sig, folder m/ -> m.sig
      allow_unsigned_paths: ["scratch/*"]    # glob patterns of model paths exempt from the rule

:func:`check_trusted` is what a loader calls before reading a model: it returns when the policy
does not require a signature (or exempts the path), and raises :class:`IntegrityError` naming the
model, the bundle and the reason when the bundle is missing or does not verify with any trusted
key (see :func:`modelshield.secure.signing.verify_model`, which also refuses unsigned extra files
and symbolic links).
"""

from __future__ import annotations

import fnmatch
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelshield.errors import ConfigError, IntegrityError
from modelshield.secure.manifest import open_regular

__all__ = ["POLICY_ENV", "TrustPolicy", "check_trusted"]

POLICY_ENV = "MODELSHIELD_TRUST_POLICY"
"""Environment variable naming the trust-policy file that :meth:`TrustPolicy.from_env` reads."""

_KEYS = ("require_signature", "public_keys", "certificate_chain", "bundle_suffix", "allow_unsigned_paths")


@dataclass(frozen=True, kw_only=True, slots=True)
class TrustPolicy:
    """Whether models need a signature, and which keys (or certificate roots) are trusted.

    Attributes:
        require_signature: refuse a model without a valid bundle.
        public_keys: PEM EC public keys; a model verifying with any one of them is trusted.
        certificate_chain: PEM root/intermediate certificates for certificate-signed models.
        bundle_suffix: the bundle's name is the model's name plus this suffix.
        allow_unsigned_paths: glob patterns (matched against the path as given and its absolute
            form) of models that may be loaded without a signature.
    """

    require_signature: bool = False
    public_keys: tuple[Path, ...] = ()
    certificate_chain: tuple[Path, ...] = ()
    bundle_suffix: str = ".sig"
    allow_unsigned_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        owner = "TrustPolicy"
        if not isinstance(self.require_signature, bool):
            raise ConfigError(f"{owner}: 'require_signature' must be true or false; got "
                              f"{self.require_signature!r}. Write require_signature: true.")
        for name in ("public_keys", "certificate_chain"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(p, Path) for p in value):
                raise ConfigError(f"{owner}: {name!r} must be a tuple of paths; got {value!r}. "
                                  f"Pass e.g. {name}=(Path('release.pub'),).")
        if (not isinstance(self.bundle_suffix, str) or not self.bundle_suffix or "/" in self.bundle_suffix):
            raise ConfigError(f"{owner}: 'bundle_suffix' must be a non-empty file-name suffix; got "
                              f"{self.bundle_suffix!r}. Use '.sig'.")
        if not isinstance(self.allow_unsigned_paths, tuple) or not all(
                isinstance(p, str) and p for p in self.allow_unsigned_paths):
            raise ConfigError(f"{owner}: 'allow_unsigned_paths' must be a tuple of glob patterns; got "
                              f"{self.allow_unsigned_paths!r}. Pass e.g. ('scratch/*',).")
        if self.require_signature and not (self.public_keys or self.certificate_chain):
            raise ConfigError(f"{owner}: 'public_keys' (or 'certificate_chain') must name at least one "
                              "trusted key when require_signature is true; got none. "
                              "Add public_keys: [your.pub].")

    def to_dict(self) -> dict[str, Any]:
        return {"require_signature": self.require_signature,
                "public_keys": [str(p) for p in self.public_keys],
                "certificate_chain": [str(p) for p in self.certificate_chain],
                "bundle_suffix": self.bundle_suffix,
                "allow_unsigned_paths": list(self.allow_unsigned_paths)}

    @classmethod
    def from_mapping(cls, data: object, *, base: Path | None = None,
                     source: str = "trust policy") -> TrustPolicy:
        """Build a policy from a mapping (the ``trust`` section is used when present); relative
        key paths are resolved against ``base``. ConfigError names any unknown or bad field."""
        if isinstance(data, Mapping) and "trust" in data:
            data = data["trust"]
            source = f"the 'trust' section of {source}"
        if not isinstance(data, Mapping):
            raise ConfigError(f"TrustPolicy: {source} must be a mapping of {', '.join(_KEYS)}; got "
                              f"{type(data).__name__}. See the modelshield.secure.policy docs.")
        unknown = sorted(str(k) for k in data if k not in _KEYS)
        if unknown:
            raise ConfigError(f"TrustPolicy: {source} has unknown field(s) {', '.join(unknown)}; allowed: "
                              f"{', '.join(_KEYS)}. Check the spelling.")

        def paths(name: str) -> tuple[Path, ...]:
            value = data.get(name, [])
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"TrustPolicy: {name!r} in {source} must be a list of file paths; got "
                                  f"{value!r}. Write {name}: [key.pub].")
            resolved = [Path(v).expanduser() for v in value]
            return tuple(base / p if base is not None and not p.is_absolute() else p for p in resolved)

        allow = data.get("allow_unsigned_paths", [])
        if isinstance(allow, str):
            allow = [allow]
        if not isinstance(allow, list):
            raise ConfigError(f"TrustPolicy: 'allow_unsigned_paths' in {source} must be a list of glob "
                              f"patterns; got {allow!r}. Write allow_unsigned_paths: ['scratch/*'].")
        return cls(require_signature=data.get("require_signature", False), public_keys=paths("public_keys"),
                   certificate_chain=paths("certificate_chain"),
                   bundle_suffix=data.get("bundle_suffix", ".sig"), allow_unsigned_paths=tuple(allow))

    @classmethod
    def load(cls, path: str | Path) -> TrustPolicy:
        """Read a policy from a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file (yaml.safe_load only)."""
        p = Path(path).expanduser()
        try:
            with open_regular(p, follow_symlinks=True) as fh:
                text = fh.read(1 << 20).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"TrustPolicy: the config file must be a readable UTF-8 file; got {str(p)!r} "
                              f"({getattr(exc, 'strerror', None) or exc}). Check the path.") from None
        suffix = p.suffix.lower()
        try:
            if suffix in (".yaml", ".yml"):
                import yaml  # type: ignore[import-untyped]  # PyYAML ships no type stubs

                data: object = yaml.safe_load(text)
            elif suffix == ".toml":
                data = tomllib.loads(text)
            elif suffix == ".json":
                data = json.loads(text)
            else:
                raise ConfigError(f"TrustPolicy: the config file must end in .yaml, .yml, .toml or .json; "
                                  f"got {str(p)!r}. Rename it.")
        except ConfigError:
            raise
        except Exception as exc:  # yaml, tomllib and json each raise their own error types
            first = " ".join(str(exc).split())[:200]
            raise ConfigError(f"TrustPolicy: {str(p)!r} must be valid {suffix[1:].upper()}; parsing failed "
                              f"({first}). Fix the file.") from None
        return cls.from_mapping(data, base=p.parent, source=repr(str(p)))

    @classmethod
    def from_env(cls) -> TrustPolicy:
        """The policy in the file ``$MODELSHIELD_TRUST_POLICY`` names; the default (no signature
        required) when it is unset or empty."""
        path = os.environ.get(POLICY_ENV, "").strip()
        return cls.load(path) if path else cls()


def _exempt(path: Path, patterns: tuple[str, ...]) -> bool:
    # '..' is collapsed first: 'scratch/../release/model.pt' is release/model.pt, and must not match
    # 'scratch/*' (fnmatch's '*' also matches '/'); a path still climbing out ('../x') matches nothing
    # relative, only its absolute form
    rel = os.path.normpath(path)
    forms = {os.path.normpath(path.absolute())}
    if not rel.startswith(".." + os.sep) and rel != "..":
        forms |= {rel, Path(rel).as_posix()}
    return any(fnmatch.fnmatchcase(form, pat) for pat in patterns for form in forms)


def check_trusted(path: str | Path, policy: TrustPolicy) -> str:
    """Return when the model at path may be loaded under policy; raise IntegrityError otherwise.

    Returns how: ``"not-required"`` (the policy asks for no signature), ``"exempt"`` (the path
    matches ``allow_unsigned_paths``) or ``"verified"``.

    The bundle is ``<path><bundle_suffix>``. The model is trusted when it verifies with any of the
    policy's public keys (or, failing those, its certificate chain).

    Raises:
        IntegrityError: the bundle is missing, or the signature, a file digest, an unsigned extra
            file or a symbolic link fails verification with every trusted key (the reason names it).
        ConfigError: policy is not a TrustPolicy, or a key file cannot be read.
    """
    if not isinstance(policy, TrustPolicy):
        raise ConfigError(f"check_trusted: 'policy' must be a TrustPolicy; got {type(policy).__name__}. "
                          "Load one with TrustPolicy.load(path).")
    model = Path(path).expanduser()
    if not policy.require_signature:
        return "not-required"
    if _exempt(model, policy.allow_unsigned_paths):
        return "exempt"
    from modelshield.secure.signing import default_bundle, verify_model

    bundle = default_bundle(model, suffix=policy.bundle_suffix)
    if not (bundle.is_file() or bundle.is_symlink()):
        raise IntegrityError(
            f"trust policy: {str(model)!r} must be signed, but its signature {str(bundle)!r} does not exist. "
            "Sign it with 'modelshield sign' or add it to allow_unsigned_paths."
        )
    reasons: list[str] = []
    attempts: list[dict[str, Any]] = [{"public_key": k} for k in policy.public_keys]
    if policy.certificate_chain:
        attempts.append({"certificate_chain": list(policy.certificate_chain)})
    for attempt in attempts:
        result = verify_model(model, bundle=bundle, **attempt)
        if result.ok:
            return "verified"
        reasons.append(result.reason)
    # a key whose hint matched gives the informative reason (tampering) rather than "key mismatch"
    best = next((r for r in reasons if "Key mismatch" not in r), reasons[-1])
    raise IntegrityError(
        f"trust policy: {str(model)!r} must verify with a trusted key; it does not ({best}). "
        "Do not load it; restore the signed files or re-sign them only if you trust them."
    )
