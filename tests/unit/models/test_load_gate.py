"""The gate in front of every model file: the trust policy's signature check, then the static scan."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from modelshield.errors import IntegrityError
from modelshield.models import load_model_ref
from modelshield.models.archs import build
from modelshield.models.load import UnsafeModelFileError, load_model, save_model
from modelshield.secure.policy import POLICY_ENV
from modelshield.secure.signing import generate_keypair, sign_model


def test_a_clean_model_records_its_scan(tmp_path: Path) -> None:
    path = tmp_path / "net.pt"
    save_model(build("cnn-8x8", seed=0), path, arch="cnn-8x8")
    _, meta = load_model(path)
    assert meta["scan"]["blocked"] is False and meta["scan"]["signature"] == "not-required"
    ref = load_model_ref(path)
    assert ref.provenance.scan is not None and ref.provenance.scan["blocked"] is False
    assert ref.provenance.to_dict()["scan"]["formats"]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_trust_pickle_is_the_opt_in_past_the_scan(tmp_path: Path) -> None:
    """A pickle needs trust_pickle whatever the scan says (unpickling runs code); a plain
    scikit-learn estimator's pickle names only allow-listed reconstructors, so its scan is clean."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    path = tmp_path / "clf.bin"
    path.write_bytes(pickle.dumps(clf))
    with pytest.raises(UnsafeModelFileError, match="trust_pickle=True"):
        load_model_ref(path)
    with pytest.warns(UserWarning, match="trust_pickle=True"):
        ref = load_model_ref(path, trust_pickle=True)
    assert ref.provenance.scan is not None and ref.provenance.scan["blocked"] is False
    assert ref.provenance.scan["formats"] == {str(path): "pickle"}


def test_torch_file_with_a_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2), "x": _Payload(marker)}, path)
    with pytest.raises(UnsafeModelFileError, match=r"static scan.*mkdir"):
        load_model(path, arch="cnn-8x8")
    with pytest.raises(UnsafeModelFileError, match=r"static scan.*mkdir"):
        load_model_ref(path, arch="cnn-8x8")
    assert not marker.exists()


def test_trust_policy_requires_a_valid_signature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = generate_keypair(tmp_path / "keys")
    models = tmp_path / "models"
    models.mkdir()
    path = models / "net.pt"
    save_model(build("cnn-8x8", seed=0), path, arch="cnn-8x8")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"trust:\n  require_signature: true\n  public_keys: [{keys.public_key}]\n")
    monkeypatch.setenv(POLICY_ENV, str(policy))
    with pytest.raises(IntegrityError, match="must be signed"):
        load_model(path)
    sign_model(path, private_key=keys.private_key)
    _, meta = load_model(path)
    assert meta["scan"]["signature"] == "verified"
    assert load_model_ref(path).provenance.scan["signature"] == "verified"  # type: ignore[index]
    # swap the weights after signing: refused before anything reads them
    save_model(build("cnn-8x8", seed=1), path, arch="cnn-8x8", overwrite=True)
    with pytest.raises(IntegrityError, match="must verify with a trusted key"):
        load_model(path)


def test_a_file_swapped_between_the_checks_and_the_load_is_refused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader opens the file again after the scan: a swap in between must not load unchecked."""
    import modelshield.models.load as load_mod
    import modelshield.models.refs as refs_mod

    path = tmp_path / "net.pt"
    save_model(build("cnn-8x8", seed=0), path, arch="cnn-8x8")
    other = tmp_path / "other.pt"
    save_model(build("cnn-8x8", seed=1), other, arch="cnn-8x8")
    real_read, real_format = load_mod._read_weights, refs_mod._load_format

    def swap_then(real):  # type: ignore[no-untyped-def]
        def inner(*args, **kwargs):  # type: ignore[no-untyped-def]
            path.write_bytes(other.read_bytes())  # the attacker's swap, after the scan
            return real(*args, **kwargs)
        return inner

    monkeypatch.setattr(load_mod, "_read_weights", swap_then(real_read))
    with pytest.raises(IntegrityError, match="must not change while it is checked and loaded"):
        load_model(path)
    monkeypatch.setattr(load_mod, "_read_weights", real_read)
    save_model(build("cnn-8x8", seed=0), path, arch="cnn-8x8", overwrite=True)
    monkeypatch.setattr(refs_mod, "_load_format", swap_then(real_format))
    with pytest.raises(IntegrityError, match="must not change"):
        load_model_ref(path)
