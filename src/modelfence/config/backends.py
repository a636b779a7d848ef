"""A classifier's `backend:` (a local file or an OIP upstream), its tensors and input limits,
and the checks its model file must pass (`artifact:`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .base import ConfigPath, Strict

#: OIP parameters that steer the upstream's decoding or its response headers (MLServer
#: crashes on a `content_type` that does not fit the tensor): only the operator sets them.
NEVER_FORWARDED = frozenset({"content_type", "headers"})
DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES")



class TensorSpec(Strict):
    name: str
    datatype: Literal[DATATYPES]  # type: ignore[valid-type]
    shape: list[int]

    @field_validator("shape")
    @classmethod
    def _shape_ok(cls, v: list[int]) -> list[int]:
        if not v or any(d < -1 or d == 0 for d in v):
            raise ValueError("shape needs one or more dimensions, each positive or -1")
        return v


class InputLimits(Strict):
    max_batch: int = Field(1024, ge=1)
    max_elements: int = Field(1_000_000, ge=1)
    max_body_bytes: int | None = Field(None, ge=1024)
    allow_nonfinite: bool = False
    max_abs_value: float | None = Field(
        1e30, gt=0, description="largest magnitude of a numeric input value (400 beyond); "
        "keeps float32 sums finite in the model; null turns the check off")


class ArtifactSignature(Strict):
    """A valid OpenSSF model-signing signature, chaining to this key or certificate chain."""

    public_key: ConfigPath | None = None
    certificate_chain: list[ConfigPath] = Field(default_factory=list)
    file: ConfigPath | None = Field(None, description="the signature; default: <model file>.sig")

    @model_validator(mode="after")
    def _one_anchor(self) -> ArtifactSignature:
        if (self.public_key is None) == (not self.certificate_chain):
            raise ValueError("give public_key or certificate_chain (one of them)")
        return self


class ArtifactDecryption(Strict):
    """The key-encryption key of an encrypted model file: a keyring file or a PKCS#11 token."""

    keyring: ConfigPath | None = None
    key_id: str | None = None
    pkcs11_module: ConfigPath | None = None
    token_label: str | None = None
    key_label: str | None = None
    pin_file: ConfigPath | None = None

    @model_validator(mode="after")
    def _one_provider(self) -> ArtifactDecryption:
        token = (self.pkcs11_module, self.token_label, self.key_label, self.pin_file)
        if self.keyring is None and not all(token):
            raise ValueError("give keyring, or pkcs11_module, token_label, key_label and "
                             "pin_file")
        if self.keyring is not None and any(token):
            raise ValueError("give keyring or a PKCS#11 token, not both")
        return self


class ArtifactChecks(Strict):
    """What a model file must pass before it is loaded; a model failing them is not served."""

    signature: ArtifactSignature | None = None
    scan: bool = Field(True, description="scan pickle-based files (picklescan, modelscan)")
    decrypt: ArtifactDecryption | None = None


class LocalBackend(Strict):
    """A model file served in-process: skops (scikit-learn), ONNX, or — only if allowed — pickle."""

    type: Literal["skops", "onnx", "pickle"]
    path: ConfigPath
    trusted_types: list[str] = Field(default_factory=list, description="extra skops types to trust")
    allow_unsafe_pickle: bool = False
    artifact: ArtifactChecks | None = None

    @model_validator(mode="after")
    def _pickle_needs_consent(self) -> LocalBackend:
        if self.type == "pickle" and not self.allow_unsafe_pickle:
            raise ValueError(
                "pickle runs arbitrary code when loaded; convert the model to skops or ONNX, "
                "or set allow_unsafe_pickle: true if you trust this file"
            )
        return self


class OipUpstreamBackend(Strict):
    """A model on an Open Inference Protocol v2 server (KServe, Triton, MLServer)."""

    type: Literal["oip"]
    url: str = Field(pattern=r"^(https?|grpc)://", description="the server's base URL; "
                     "grpc://HOST:PORT reaches its gRPC service (the `grpc` extra)")
    upstream_model: str | None = None
    timeout_s: float = Field(10.0, gt=0, le=600)
    connect_timeout_s: float = Field(2.0, gt=0, le=60)
    max_connections: int = Field(100, ge=1, le=10_000)
    probabilities_output: str | None = Field(
        None, description="upstream output holding [n, classes] probabilities; when set, the "
        "answer is reshaped into modelfence's classifier contract (probabilities, label)")
    forward_parameters: list[str] = Field(
        default_factory=list, description="names of client `parameters` (request-level, "
        "per-input and per-output) passed to the upstream when their value is a short "
        "printable string, a finite number or a boolean; every other parameter is dropped")
    forward_request_id: bool = Field(
        True, description="send the client's request `id` upstream when it is 1 to 128 "
        "visible ASCII characters (inner spaces allowed); otherwise, or when false, the "
        "upstream gets an id of the gateway's own. The client's answer carries its own id")
    retry_closed_connection: bool = Field(
        True, description="send a request once more, on a new connection, when the pooled "
        "connection it left on was found closed before any answer")

    @field_validator("forward_parameters")
    @classmethod
    def _safe_forwarding(cls, v: list[str]) -> list[str]:
        refused = sorted(set(v) & NEVER_FORWARDED)
        if refused:
            raise ValueError(f"{', '.join(refused)} cannot be forwarded from clients: it "
                             "decides how the upstream decodes a tensor the gateway has "
                             "validated or what headers it answers with; set it in the "
                             "upstream's own model settings")
        internal = sorted(name for name in v if name.startswith("_"))
        if internal:
            raise ValueError(f"{', '.join(internal)} cannot be forwarded from clients: names "
                             "starting with '_' are the upstream's own (MLServer reads "
                             "_decoded_payload instead of the tensor the gateway validated)")
        return v


BackendSettings = Annotated[LocalBackend | OipUpstreamBackend, Field(discriminator="type")]
