"""Errors raised by the artifact tools (all `ModelfenceError`s with a one-line message).

    ModelfenceError
    └── ArtifactError            an artifact cannot be trusted or used
        ├── SignatureError       missing, invalid or mismatching signature
        ├── DecryptionError      wrong key, altered/truncated/reordered/appended ciphertext
        ├── KeyProviderError     the key-encryption key cannot be found or used
        ├── UnsafeArtifact       a scanner found dangerous content (pickle globals, ...)
        └── NotScanned           no scanner could vouch for the artifact (never "clean")
"""

from __future__ import annotations

from ..errors import ModelfenceError


class ArtifactError(ModelfenceError):
    """An artifact cannot be trusted or used; the message is one line."""


class SignatureError(ArtifactError):
    pass


class DecryptionError(ArtifactError):
    pass


class KeyProviderError(ArtifactError):
    pass


class UnsafeArtifact(ArtifactError):
    pass


class NotScanned(ArtifactError):
    pass
