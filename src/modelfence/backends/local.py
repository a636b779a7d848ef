"""Model files served in-process: skops and ONNX are safe formats; pickle only by consent."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..config import LocalBackend, ModelSettings, TensorSpec, read_secret
from ..errors import BadRequest, ConfigurationError
from ..extras import require, skops_io
from .base import NOT_COMPUTABLE, LocalClassifier

#: How scikit-learn's check_array words non-finite input (sklearn/utils/validation.py).
_SKLEARN_NOT_FINITE = ("contains infinity or a value too large", "contains NaN")


def _settings(b: LocalClassifier) -> LocalBackend:
    assert isinstance(b.settings.backend, LocalBackend)
    return b.settings.backend


#: What each local format imports (all in the `local` extra).
_FORMAT_MODULES = {"skops": ("sklearn", "skops"), "pickle": ("sklearn", "joblib"),
                   "onnx": ("onnxruntime",)}


def require_extras(settings: ModelSettings) -> None:
    """Refuse at start, naming the extra, a local model whose format or artifact checks need
    libraries that are not installed (the base install has none of them)."""
    cfg = settings.backend
    assert isinstance(cfg, LocalBackend)
    what = f"model {settings.name} ({cfg.type} file)"
    require("local", what, *_FORMAT_MODULES[cfg.type])
    checks = cfg.artifact
    if checks is None:
        return
    if checks.signature is not None:
        require("artifacts", f"model {settings.name}: signature checks", "model_signing",
                "OpenSSL")
    if checks.scan and cfg.type == "pickle":
        require("artifacts", f"model {settings.name}: scanning pickles", "picklescan",
                "modelscan")
    if checks.decrypt is not None and checks.decrypt.pkcs11_module is not None:
        require("artifacts", f"model {settings.name}: a PKCS#11 key", "pkcs11")


def _artifact(b: LocalClassifier) -> bytes | Path:
    """The model file after its configured checks: a checked path, or decrypted bytes.

    Decrypted weights stay in memory; they are never written to disk. A failed check raises
    an `ArtifactError`, and the gateway then serves the other models without this one.
    """
    cfg = _settings(b)
    if cfg.artifact is None:
        return cfg.path
    from ..artifacts.guard import check_artifact
    from ..artifacts.keys import KeyProvider, KeyringProvider, Pkcs11Provider
    from ..artifacts.signing import SignaturePolicy

    checks = cfg.artifact
    signature = None
    if checks.signature is not None:
        sig = checks.signature
        signature = SignaturePolicy(public_key=sig.public_key,
                                    certificate_chain=tuple(sig.certificate_chain),
                                    signature=sig.file)
    provider: KeyProvider | None = None
    if checks.decrypt is not None:
        d = checks.decrypt
        if d.keyring is not None:
            provider = KeyringProvider(d.keyring, d.key_id)
        else:
            assert d.pkcs11_module and d.token_label and d.key_label and d.pin_file
            provider = Pkcs11Provider(d.pkcs11_module, token_label=d.token_label,
                                      key_label=d.key_label, pin=read_secret(d.pin_file))
    return check_artifact(cfg.path, require_signature=signature, require_scan=checks.scan,
                          decrypt_with=provider)


class _SklearnClassifier(LocalClassifier):
    """Shared by skops and pickle: both yield a scikit-learn estimator."""

    _model: Any

    def __init__(self, settings: ModelSettings) -> None:
        require_extras(settings)
        super().__init__(settings)

    def _from_estimator(self, model: Any) -> tuple[TensorSpec, np.ndarray[Any, Any]]:
        if not hasattr(model, "predict_proba"):
            raise ConfigurationError(
                f"model {self.name}: {type(model).__name__} has no predict_proba; "
                "modelfence serves classifiers that return class probabilities")
        self._model = model
        n = int(getattr(model, "n_features_in_", 0)) or -1
        spec = TensorSpec(name="input", datatype="FP32", shape=[-1, n])
        return spec, np.asarray(model.classes_)

    def _predict_proba(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return np.asarray(self._model.predict_proba(x))  # a non-finite answer is a 400
        except ValueError as exc:  # scikit-learn's own check, e.g. after a scaler overflowed
            if any(word in str(exc) for word in _SKLEARN_NOT_FINITE):
                raise BadRequest(NOT_COMPUTABLE) from None
            raise


class SkopsClassifier(_SklearnClassifier):
    platform: ClassVar[str] = "sklearn"

    def _load(self) -> tuple[TensorSpec, np.ndarray[Any, Any]]:
        sio = skops_io()

        cfg = _settings(self)
        source = _artifact(self)
        try:
            untrusted = set(sio.get_untrusted_types(data=source) if isinstance(source, bytes)
                            else sio.get_untrusted_types(file=source))
        except Exception as exc:
            raise ConfigurationError(f"model {self.name}: cannot read skops file {cfg.path}: "
                                     f"{exc.__class__.__name__}") from None
        refused = sorted(untrusted - set(cfg.trusted_types))
        if refused:
            raise ConfigurationError(
                f"model {self.name}: {cfg.path} contains types skops does not trust: "
                f"{', '.join(refused)}; review them and list them under backend.trusted_types")
        trusted = sorted(untrusted)
        model = (sio.loads(source, trusted=trusted) if isinstance(source, bytes)
                 else sio.load(source, trusted=trusted))
        return self._from_estimator(model)


class PickleClassifier(_SklearnClassifier):
    """Loads joblib/pickle files — arbitrary code runs on load, so config must opt in."""

    platform: ClassVar[str] = "sklearn-pickle"

    def _load(self) -> tuple[TensorSpec, np.ndarray[Any, Any]]:
        import joblib

        cfg = _settings(self)
        if not cfg.allow_unsafe_pickle:  # config validation already refuses this; keep it closed
            raise ConfigurationError(f"model {self.name}: pickle refused")
        source = _artifact(self)
        try:
            model = joblib.load(io.BytesIO(source) if isinstance(source, bytes) else source)
        except Exception as exc:
            raise ConfigurationError(f"model {self.name}: cannot load {cfg.path}: "
                                     f"{exc.__class__.__name__}") from None
        return self._from_estimator(model)


_ORT_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64",
              "tensor(int32)": "INT32", "tensor(float16)": "FP16", "tensor(uint8)": "UINT8"}


class OnnxClassifier(LocalClassifier):
    platform: ClassVar[str] = "onnx"

    def __init__(self, settings: ModelSettings) -> None:
        require_extras(settings)
        super().__init__(settings)

    def _load(self) -> tuple[TensorSpec, np.ndarray[Any, Any]]:
        import onnxruntime as ort

        cfg = _settings(self)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        source = _artifact(self)
        try:
            sess = ort.InferenceSession(source if isinstance(source, bytes) else str(source),
                                        opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ConfigurationError(f"model {self.name}: cannot load ONNX file {cfg.path}: "
                                     f"{exc.__class__.__name__}") from None
        inp = sess.get_inputs()[0]
        datatype = _ORT_TYPES.get(inp.type)
        if datatype is None:
            raise ConfigurationError(f"model {self.name}: unsupported ONNX input type {inp.type}")
        shape = [d if isinstance(d, int) and d > 0 else -1 for d in inp.shape]
        self._input_name = inp.name
        self._proba_name, self._zipmap = self._find_probabilities(sess)
        self._sess = sess
        classes = self._discover_classes(shape)
        return TensorSpec(name=inp.name, datatype=datatype, shape=shape), classes

    def _find_probabilities(self, sess: Any) -> tuple[str, bool]:
        for out in sess.get_outputs():
            if out.type == "tensor(float)" and len(out.shape) == 2:
                return out.name, False
            if out.type.startswith("seq(map("):
                return out.name, True  # skl2onnx's ZipMap output
        raise ConfigurationError(
            f"model {self.name}: no ONNX output holds class probabilities ([n, classes] float)")

    def _discover_classes(self, shape: list[int]) -> np.ndarray[Any, Any]:
        probe = np.zeros([1, *[d if d > 0 else 1 for d in shape[1:]]], dtype=np.float32)
        raw = self._sess.run([self._proba_name], {self._input_name: probe})[0]
        if self._zipmap:
            return np.asarray(sorted(raw[0].keys()))
        return np.arange(np.asarray(raw).shape[1])

    def _predict_proba(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        raw = self._sess.run([self._proba_name], {self._input_name: x})[0]
        if self._zipmap:
            keys = sorted(raw[0].keys())
            return np.asarray([[row[k] for k in keys] for row in raw], dtype=np.float32)
        return np.asarray(raw)
