"""Model artifacts: sign/verify, encrypt/decrypt, scan, and guarded loading.

Heavy dependencies (model-signing with PyKCS11, picklescan, modelscan, python-pkcs11: the
`artifacts` extra) are imported only when the function that needs them runs.
"""

from .envelope import decrypt_file, decrypt_to_bytes, encrypt_file, iter_decrypt
from .errors import (
    ArtifactError,
    DecryptionError,
    KeyProviderError,
    NotScanned,
    SignatureError,
    UnsafeArtifact,
)
from .guard import check_artifact
from .keys import KeyProvider, KeyringProvider, Pkcs11Provider
from .scan import ScanReport, Verdict, scan_path
from .signing import Pkcs11Key, SignaturePolicy, sign_model, verify_model

__all__ = [
    "ArtifactError", "DecryptionError", "KeyProvider", "KeyProviderError", "KeyringProvider",
    "NotScanned", "Pkcs11Key", "Pkcs11Provider", "ScanReport", "SignatureError",
    "SignaturePolicy", "UnsafeArtifact", "Verdict", "check_artifact", "decrypt_file",
    "decrypt_to_bytes", "encrypt_file", "iter_decrypt", "scan_path", "sign_model",
    "verify_model",
]
