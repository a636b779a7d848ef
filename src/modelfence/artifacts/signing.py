"""Sign and verify a model file or folder with OpenSSF model-signing (fully offline).

Signers: an ECDSA private key (PEM; P-256/384/521), a key + certificate chain, or an EC key
held in a PKCS#11 token. A token signs through model-signing's own PKCS#11 signer (its
public `use_pkcs11_signer`, with a PKCS#11 URI, RFC 7512), so the bundle is the standard
one any model-signing verifier accepts with the token's public key. Keys are created and
read with python-pkcs11 (`Pkcs11Key.generate`, `public_key`); model-signing drives the
token through PyKCS11 (its `pkcs11` extra). Both come with `modelfence[artifacts]`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import KeyProviderError, SignatureError


def default_signature_path(model: str | Path) -> Path:
    """`<model>.sig` next to the file or folder (outside it, so nothing needs ignoring)."""
    model = Path(model)
    return model.with_name(model.name + ".sig")


@dataclass(frozen=True)
class SignaturePolicy:
    """What a valid signature must chain to: a public key or certificate chain."""

    public_key: Path | None = None
    certificate_chain: tuple[Path, ...] = ()
    signature: Path | None = None  # default: <model>.sig

    def __post_init__(self) -> None:
        if (self.public_key is None) == (not self.certificate_chain):
            raise SignatureError("a signature policy needs a public key or a certificate chain")


@dataclass(frozen=True)
class Pkcs11Key:
    """An EC key pair in a PKCS#11 token, found by label."""

    module: Path
    token_label: str
    pin: str = field(repr=False)
    key_label: str

    def _session(self, rw: bool = False) -> Any:
        try:
            import pkcs11
        except ImportError:
            raise KeyProviderError(
                "PKCS#11 needs python-pkcs11: pip install 'modelfence[artifacts]'") from None
        try:
            token = pkcs11.lib(str(self.module)).get_token(token_label=self.token_label)
            return token.open(user_pin=self.pin, rw=rw)
        except Exception as exc:
            raise KeyProviderError(
                f"PKCS#11 token {self.token_label!r}: {type(exc).__name__}") from None

    def generate(self, curve: str = "secp256r1") -> None:
        """Create the EC key pair inside the token (the private key is not extractable)."""
        import pkcs11
        from pkcs11.util.ec import encode_named_curve_parameters

        with self._session(rw=True) as s:
            params = s.create_domain_parameters(
                pkcs11.KeyType.EC,
                {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters(curve)},
                local=True)
            params.generate_keypair(store=True, label=self.key_label)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        import pkcs11
        from pkcs11.util.ec import encode_ec_public_key

        with self._session() as s:
            try:
                pub = s.get_key(object_class=pkcs11.ObjectClass.PUBLIC_KEY,
                                key_type=pkcs11.KeyType.EC, label=self.key_label)
            except pkcs11.NoSuchKey:
                raise KeyProviderError(
                    f"PKCS#11 token {self.token_label!r} has no EC key {self.key_label!r}"
                ) from None
            key = serialization.load_der_public_key(encode_ec_public_key(pub))
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return key

    def public_pem(self) -> bytes:
        return self.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)

    def uri(self) -> str:
        """The key as a PKCS#11 URI (RFC 7512) for model-signing, PIN included: never log it."""
        def q(value: str) -> str:
            return quote(value, safe="")

        return (f"pkcs11:token={q(self.token_label)};object={q(self.key_label)}"
                f"?module-path={quote(str(self.module.resolve()), safe='/')}"
                f"&pin-value={q(self.pin)}")


def _hashing_config(model: Path, signature: Path) -> Any:
    cfg = _model_signing("hashing").Config()
    if model.is_dir() and signature.resolve().is_relative_to(model.resolve()):
        cfg.set_ignored_paths(paths=[signature.resolve()])
    return cfg


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def sign_model(model: str | Path, *, signature: str | Path | None = None,
               private_key: str | Path | None = None,
               certificate: str | Path | None = None,
               certificate_chain: Sequence[str | Path] = (),
               pkcs11_key: Pkcs11Key | None = None) -> Path:
    """Sign `model` (file or folder); returns the signature path (default `<model>.sig`)."""
    model = Path(model)
    sig = Path(signature) if signature else default_signature_path(model)
    if not model.exists():
        raise SignatureError(f"{model}: no such file or folder")
    if (private_key is None) == (pkcs11_key is None):
        raise SignatureError("give exactly one of a private key file or a PKCS#11 key")
    signing = _model_signing("signing")
    cfg = signing.Config().set_hashing_config(_hashing_config(model, sig))
    try:
        if pkcs11_key is not None:
            _use_token(cfg, pkcs11_key)
        elif certificate is not None:
            cfg.use_certificate_signer(private_key=Path(private_key),  # type: ignore[arg-type]
                                       signing_certificate=Path(certificate),
                                       certificate_chain=[Path(c) for c in certificate_chain])
        else:
            cfg.use_elliptic_key_signer(private_key=Path(private_key))  # type: ignore[arg-type]
        cfg.sign(model, sig)
    except (KeyProviderError, SignatureError):
        raise
    except Exception as exc:
        raise SignatureError(f"{model}: signing failed: {_one_line(exc)}") from None
    return sig


def _use_token(cfg: Any, key: Pkcs11Key) -> None:
    """model-signing's PKCS#11 signer on `key`; its errors without the URI (it holds the PIN)."""
    from importlib.util import find_spec

    if find_spec("PyKCS11") is None:
        raise KeyProviderError(
            "PKCS#11 signing needs PyKCS11: pip install 'modelfence[artifacts]'")
    # A module is initialized once per process, and PyKCS11 finalizes it when the signer
    # goes: python-pkcs11 (which made or read the key) lets it go first, and loads it afresh
    # when next used, instead of keeping a handle the signer finalized.
    if "pkcs11" in sys.modules:
        sys.modules["pkcs11"].unload(str(key.module))
    try:
        cfg.use_pkcs11_signer(pkcs11_uri=key.uri())
        return
    except Exception as exc:
        text = _one_line(exc).replace(key.uri(), "<pkcs11 uri>")
        if key.pin:
            text = text.replace(key.pin, "***").replace(quote(key.pin, safe=""), "***")
    # raised here, not in the handler, so that the error does not keep PyKCS11's half-made
    # signer (and the module it initialized) alive through its traceback
    raise KeyProviderError(f"PKCS#11 token {key.token_label!r}, key {key.key_label!r}: {text}")


def _model_signing(module: str) -> Any:
    """`model_signing.<module>`, or a SignatureError naming the extra that brings it."""
    import importlib

    try:
        return importlib.import_module(f"model_signing.{module}")
    except ImportError:
        raise SignatureError(
            "model signatures need model-signing: pip install 'modelfence[artifacts]'") from None


def verify_model(model: str | Path, policy: SignaturePolicy) -> None:
    """Raise `SignatureError` (one line, naming the file) unless `model` matches its signature."""
    model = Path(model)
    sig = policy.signature or default_signature_path(model)
    if not model.exists():
        raise SignatureError(f"{model}: no such file or folder")
    if not sig.is_file():
        raise SignatureError(f"{model}: signature {sig} not found")
    verifying = _model_signing("verifying")
    try:
        cfg = verifying.Config().set_hashing_config(_hashing_config(model, sig))
        if policy.public_key is not None:
            cfg.use_elliptic_key_verifier(public_key=policy.public_key)
        else:
            cfg.use_certificate_verifier(certificate_chain=list(policy.certificate_chain))
        cfg.verify(model, sig)
    except Exception as exc:
        raise SignatureError(f"{model}: signature verification failed: {_explain(model, exc)}") \
            from None


def _explain(model: Path, exc: BaseException) -> str:
    """model-signing's mismatch report (digests and all) cut down to the files that differ."""
    text = str(exc)
    if not text.startswith("Signature mismatch"):
        return _one_line(exc)
    parts: list[str] = []
    changed = [model.name if n == "." else n
               for n in re.findall(r"Hash mismatch for \\?'(.*?)\\?'", text)]
    if changed:
        parts.append("modified " + ", ".join(changed))
    for kind, label in (("Extra files found", "unsigned extra"), ("Missing files", "missing")):
        m = re.search(kind + r" in model '[^']*': ([^\"'\]]*)", text)
        if m:
            parts.append(f"{label} {m.group(1).strip()}")
    return "; ".join(parts) or _one_line(exc)
