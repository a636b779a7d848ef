"""Signing with a token through model-signing's public PKCS#11 signer: errors name the token
and key, never the PIN (the PKCS#11 URI carries it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfence.artifacts import KeyProviderError, Pkcs11Key, sign_model

from .test_artifact_crypto import softhsm  # noqa: F401  (fixture)

PIN = "1234"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x01" * 64)
    return folder


def test_wrong_pin_is_a_key_error_without_the_pin(softhsm: Path,  # noqa: F811
                                                  model: Path) -> None:
    Pkcs11Key(softhsm, "mf", PIN, "signer").generate()
    wrong = "98%&7654"
    with pytest.raises(KeyProviderError, match="'mf'") as err:
        sign_model(model, pkcs11_key=Pkcs11Key(softhsm, "mf", wrong, "signer"))
    assert wrong not in str(err.value) and "98%25" not in str(err.value)
    assert not (model.parent / "model.sig").exists()


def test_missing_key_names_it(softhsm: Path, model: Path) -> None:  # noqa: F811
    with pytest.raises(KeyProviderError, match="'absent'") as err:
        sign_model(model, pkcs11_key=Pkcs11Key(softhsm, "mf", PIN, "absent"))
    assert PIN not in str(err.value).replace("'mf'", "")


def test_the_uri_escapes_labels_and_pin(tmp_path: Path) -> None:
    uri = Pkcs11Key(tmp_path / "lib.so", "my token", "a;b&c", "key/1").uri()
    assert uri.startswith("pkcs11:token=my%20token;object=key%2F1?module-path=/")
    assert uri.endswith("&pin-value=a%3Bb%26c")
