"""Signing with OpenSSF model signing: our bundles against its CLI and back, tampering of every kind,
certificate mode with a self-made CA, the trust policy, and the missing-extra message."""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("model_signing")

from modelshield.errors import ConfigError, IntegrityError, MissingDataError
from modelshield.secure.policy import TrustPolicy, check_trusted
from modelshield.secure.signing import KeyPair, VerificationResult, generate_keypair, sign_model, verify_model

CLI = shutil.which("model_signing") or str(Path(sys.executable).parent / "model_signing")


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    if not Path(CLI).exists():
        pytest.skip("the model_signing CLI is not installed")
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return generate_keypair(tmp_path_factory.mktemp("other"))


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(os.urandom(4096))
    (root / "config.json").write_text('{"layers": 3}')
    (root / "sub" / "tokenizer.txt").write_text("a\nb\n")
    return root


def test_generate_keypair_private_key_is_owner_only(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pair = generate_keypair(tmp_path / "k")
    assert stat.S_IMODE(pair.private_key.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(pair.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1"
    public = serialization.load_pem_public_key(pair.public_key.read_bytes())
    assert public == private.public_key()
    with pytest.raises(ConfigError, match="must not exist yet"):
        generate_keypair(tmp_path / "k")


def test_sign_then_verify(model: Path, keys: KeyPair, tmp_path: Path) -> None:
    signed = sign_model(model, private_key=keys.private_key, bundle=tmp_path / "m.sig")
    assert signed.method == "key"
    assert signed.files == ("config.json", "sub/tokenizer.txt", "weights.bin")
    result = verify_model(model, bundle=tmp_path / "m.sig", public_key=keys.public_key)
    assert result.ok, result.reason
    assert result.digest == signed.digest and len(result.signed_files) == 3
    with pytest.raises(ConfigError, match="must not exist yet"):
        sign_model(model, private_key=keys.private_key, bundle=tmp_path / "m.sig")


def test_single_file_and_default_bundle(model: Path, keys: KeyPair) -> None:
    weights = model / "weights.bin"
    signed = sign_model(weights, private_key=keys.private_key)
    assert signed.bundle == str(model / "weights.bin.sig")
    assert verify_model(weights, public_key=keys.public_key).ok
    weights.write_bytes(b"swapped")
    result = verify_model(weights, public_key=keys.public_key)
    assert not result.ok and result.changed == ("weights.bin",)


def test_every_tampering_is_named(model: Path, keys: KeyPair, tmp_path: Path) -> None:
    bundle = tmp_path / "m.sig"
    sign_model(model, private_key=keys.private_key, bundle=bundle)

    def check() -> VerificationResult:
        return verify_model(model, bundle=bundle, public_key=keys.public_key)

    (model / "weights.bin").write_bytes(b"trojan")
    r = check()
    assert not r.ok and r.changed == ("weights.bin",) and "changed files: weights.bin" in r.reason
    sign_model(model, private_key=keys.private_key, bundle=bundle, force=True)

    (model / "sub" / "payload.pkl").write_bytes(b"extra")
    r = check()
    assert not r.ok and r.extra == ("sub/payload.pkl",) and "unsigned files: sub/payload.pkl" in r.reason
    (model / "sub" / "payload.pkl").unlink()

    (model / "config.json").unlink()
    r = check()
    assert not r.ok and r.missing == ("config.json",)
    (model / "config.json").write_text('{"layers": 3}')
    assert check().ok

    (model / "link.bin").symlink_to(model / "weights.bin")
    r = check()
    assert not r.ok and r.refused and r.refused[0].startswith("link.bin (symbolic link")
    (model / "link.bin").unlink()
    assert check().ok


def test_wrong_key_and_tampered_bundles_fail(model: Path, keys: KeyPair, other_keys: KeyPair,
                                             tmp_path: Path) -> None:
    bundle = tmp_path / "m.sig"
    sign_model(model, private_key=keys.private_key, bundle=bundle)
    r = verify_model(model, bundle=bundle, public_key=other_keys.public_key)
    assert not r.ok and "signature verification failed" in r.reason

    data = json.loads(bundle.read_text())
    payload = json.loads(base64.b64decode(data["dsseEnvelope"]["payload"]))
    payload["predicate"]["resources"][0]["digest"] = "0" * 64  # forge the signed digest list
    data["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    forged = tmp_path / "forged.sig"
    forged.write_text(json.dumps(data))
    r = verify_model(model, bundle=forged, public_key=keys.public_key)
    assert not r.ok and "signature verification failed" in r.reason

    data = json.loads(bundle.read_text())
    sig = bytearray(base64.b64decode(data["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 1
    data["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    flipped = tmp_path / "flipped.sig"
    flipped.write_text(json.dumps(data))
    assert not verify_model(model, bundle=flipped, public_key=keys.public_key).ok

    garbage = tmp_path / "garbage.sig"
    garbage.write_bytes(b"\x00not a bundle")
    r = verify_model(model, bundle=garbage, public_key=keys.public_key)
    assert not r.ok and "not a model_signing bundle" in r.reason

    with pytest.raises(MissingDataError, match="bundle must exist"):
        verify_model(model, bundle=tmp_path / "none.sig", public_key=keys.public_key)


def test_their_cli_verifies_our_bundle(model: Path, keys: KeyPair, tmp_path: Path) -> None:
    bundle = tmp_path / "ours.sig"
    sign_model(model, private_key=keys.private_key, bundle=bundle)
    ok = _cli("verify", "key", model, "--signature", bundle, "--public_key", keys.public_key)
    assert ok.returncode == 0, ok.stderr
    (model / "weights.bin").write_bytes(b"tampered")
    bad = _cli("verify", "key", model, "--signature", bundle, "--public_key", keys.public_key)
    assert bad.returncode == 1 and "weights.bin" in bad.stderr


def test_we_verify_their_bundle(model: Path, keys: KeyPair, tmp_path: Path) -> None:
    bundle = tmp_path / "theirs.sig"
    done = _cli("sign", "key", model, "--private_key", keys.private_key, "--signature", bundle)
    assert done.returncode == 0, done.stderr
    r = verify_model(model, bundle=bundle, public_key=keys.public_key)
    assert r.ok, r.reason
    (model / "extra.py").write_text("import os")
    r = verify_model(model, bundle=bundle, public_key=keys.public_key)
    assert not r.ok and r.extra == ("extra.py",)


def test_bundle_inside_the_model_folder_both_ways(model: Path, keys: KeyPair) -> None:
    ours = model / "model.sig"
    sign_model(model, private_key=keys.private_key, bundle=ours)
    assert "model.sig" not in sign_model(model, private_key=keys.private_key, bundle=ours, force=True).files
    assert verify_model(model, bundle=ours, public_key=keys.public_key).ok
    assert _cli("verify", "key", model, "--signature", ours, "--public_key", keys.public_key).returncode == 0
    theirs = model / "theirs.sig"
    ours.unlink()
    signed = _cli("sign", "key", model, "--private_key", keys.private_key, "--signature", theirs)
    assert signed.returncode == 0, signed.stderr
    assert verify_model(model, bundle=theirs, public_key=keys.public_key).ok


def test_links_are_refused_even_when_the_signer_allowed_them(model: Path, keys: KeyPair,
                                                             tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not part of the model folder")
    (model / "linked.bin").symlink_to(outside)
    bundle = tmp_path / "links.sig"
    signed = _cli("sign", "key", model, "--private_key", keys.private_key, "--signature", bundle,
                  "--allow_symlinks")
    assert signed.returncode == 0, signed.stderr
    theirs = _cli("verify", "key", model, "--signature", bundle, "--public_key", keys.public_key,
                  "--allow_symlinks")
    assert theirs.returncode == 0  # model_signing follows the link out of the folder when told to
    r = verify_model(model, bundle=bundle, public_key=keys.public_key)
    assert not r.ok and r.refused == (f"linked.bin (symbolic link to {str(outside)!r}, not followed)",)


def _ca(folder: Path) -> tuple[Path, Path, Path]:
    """A root CA and a leaf signing certificate (EC P-256), made with cryptography."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                             encipher_only=False, decipher_only=False)

    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    end = start + datetime.timedelta(days=1)
    root_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = (x509.CertificateBuilder().subject_name(name("test root")).issuer_name(name("test root"))
            .public_key(root_key.public_key()).serial_number(1).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage(sign=False, ca=True), critical=True).sign(root_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name("signer")).issuer_name(name("test root"))
            .public_key(leaf_key.public_key()).serial_number(2).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(sign=True, ca=False), critical=True).sign(root_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (folder / "root.pem").write_bytes(root.public_bytes(pem))
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (folder / "leaf.key").write_bytes(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    return folder / "root.pem", folder / "leaf.pem", folder / "leaf.key"


def test_certificate_mode_with_a_self_made_ca(model: Path, tmp_path: Path) -> None:
    root, leaf, key = _ca(tmp_path / "ca")
    other_root, _, _ = _ca(tmp_path / "other-ca")
    bundle = tmp_path / "cert.sig"
    signed = sign_model(model, private_key=key, certificate=leaf, certificate_chain=[root], bundle=bundle)
    assert signed.method == "certificate"
    assert verify_model(model, bundle=bundle, certificate_chain=[root]).ok
    r = verify_model(model, bundle=bundle, certificate_chain=[other_root])
    assert not r.ok and "signature verification failed" in r.reason
    assert _cli("verify", "certificate", model, "--signature", bundle,
                "--certificate_chain", root).returncode == 0


def test_mode_errors_are_one_line(model: Path, keys: KeyPair, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one signing mode"):
        sign_model(model, bundle=tmp_path / "x.sig")
    with pytest.raises(ConfigError, match="exactly one verification mode"):
        verify_model(model, bundle=tmp_path / "x.sig")
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key")
    with pytest.raises(ConfigError, match="readable PEM EC key"):
        sign_model(model, private_key=bad_key, bundle=tmp_path / "x.sig")
    assert not (tmp_path / "x.sig").exists()
    with pytest.raises(ConfigError, match="'private_key' must be an existing file"):
        sign_model(model, private_key=tmp_path / "none.key", bundle=tmp_path / "x.sig")
    sign_model(model, private_key=keys.private_key, bundle=tmp_path / "x.sig")
    with pytest.raises(ConfigError, match="'public_key' must be an existing file"):
        verify_model(model, bundle=tmp_path / "x.sig", public_key=tmp_path / "none.pub")
    with pytest.raises(ConfigError, match="readable PEM EC public key"):
        verify_model(model, bundle=tmp_path / "x.sig", public_key=bad_key)


def test_missing_extra_names_the_install_command(model: Path, keys: KeyPair, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "model_signing" or m.startswith("model_signing.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "model_signing", None)  # import model_signing now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'modelshield\[signing\]'"):
        sign_model(model, private_key=keys.private_key, bundle=tmp_path / "x.sig")


# ---------------------------------------------------------------------------------------------
# Trust policy
# ---------------------------------------------------------------------------------------------


def test_policy_loads_from_yaml_toml_json(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("trust:\n  require_signature: true\n  public_keys: [k.pub]\n")
    (tmp_path / "p.toml").write_text('[trust]\nrequire_signature = true\npublic_keys = ["k.pub"]\n')
    (tmp_path / "p.json").write_text('{"require_signature": true, "public_keys": ["k.pub"]}')
    policies = [TrustPolicy.load(tmp_path / f"p.{ext}") for ext in ("yaml", "toml", "json")]
    assert all(p == policies[0] for p in policies)
    assert policies[0].public_keys == (tmp_path / "k.pub",) and policies[0].bundle_suffix == ".sig"


def test_policy_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSHIELD_TRUST_POLICY", raising=False)
    assert TrustPolicy.from_env() == TrustPolicy()
    (tmp_path / "p.json").write_text('{"require_signature": true, "public_keys": ["/keys/k.pub"]}')
    monkeypatch.setenv("MODELSHIELD_TRUST_POLICY", str(tmp_path / "p.json"))
    policy = TrustPolicy.from_env()
    assert policy.require_signature and policy.public_keys == (Path("/keys/k.pub"),)


@pytest.mark.parametrize(("text", "message"), [
    ("trust: [1, 2]", "must be a mapping"),
    ("require_signatures: true", "unknown field"),
    ("require_signature: yes please", "'require_signature' must be true or false"),
    ("require_signature: true", "must name at least one trusted key"),
    ("public_keys: 3", "must be a list of file paths"),
    ("a: [unclosed", "must be valid YAML"),
])
def test_policy_errors_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        TrustPolicy.load(path)
    assert "\n" not in str(info.value)


def test_check_trusted(model: Path, keys: KeyPair, other_keys: KeyPair) -> None:
    weights = model / "weights.bin"
    assert check_trusted(weights, TrustPolicy()) == "not-required"
    policy = TrustPolicy(require_signature=True, public_keys=(other_keys.public_key, keys.public_key))
    with pytest.raises(IntegrityError, match="does not exist"):
        check_trusted(weights, policy)
    sign_model(weights, private_key=keys.private_key)
    assert check_trusted(weights, policy) == "verified"  # the second key verifies it
    with pytest.raises(IntegrityError, match="must verify with a trusted key"):
        check_trusted(weights, TrustPolicy(require_signature=True, public_keys=(other_keys.public_key,)))
    weights.write_bytes(b"swapped")
    with pytest.raises(IntegrityError, match=r"changed files: weights\.bin"):
        check_trusted(weights, policy)
    exempt = TrustPolicy(require_signature=True, public_keys=(keys.public_key,),
                         allow_unsigned_paths=(str(model / "*.bin"),))
    assert check_trusted(weights, exempt) == "exempt"
