"""`modelfence verify-ownership`, `modelfence evidence verify`, `modelfence watermark ...`.

Thin, as every command: parse, call `modelfence.watermark`, print. The library is imported
inside the commands so that `modelfence --help` stays fast. Bad input (a missing file, an
unknown model, no signing key) is one red line and exit 2; a suspect that cannot be reached
is exit 1; `evidence verify` exits 1 when the signature does not hold.
`watermark detect-text` exits 0 when the text is watermarked, 1 when it is not, 2 on errors.

`register(app)` adds the three to the main command.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape

from ..config import KEY_ENV, LocalBackend, Settings
from ..errors import ConfigurationError, ModelfenceError, RequestError, StoreError
from . import tables
from .common import (
    ConfigOption,
    check_skops_trust,
    console,
    err_console,
    fail,
    settings_from,
)

if TYPE_CHECKING:
    from ..watermark.settings import WatermarkSettings
    from ..watermark.verify import Evidence, FingerprintPlan

watermark_app = typer.Typer(help="The response watermark: keys and recorded evidence; the "
                            "LLM text watermark.",
                            no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add `verify-ownership`, `evidence` and `watermark` to the `modelfence` command."""
    from .evidence import evidence_app
    from .watermark_plan import plan

    app.command("verify-ownership")(verify_ownership)
    app.add_typer(evidence_app, name="evidence")
    watermark_app.command("plan")(plan)
    app.add_typer(watermark_app, name="watermark")


def watermark_settings(config: Path | None) -> tuple[Path, Settings, WatermarkSettings]:
    """The config and its `watermark:` section (paths resolved); exit 2 without one."""
    path, settings = settings_from(config)
    ws = getattr(settings, "watermark", None)
    if ws is None:
        raise fail(f"{path}: no watermark: section; ownership evidence needs the watermark "
                   "keys and the evidence store", 2)
    return path, settings, ws.resolved(path.parent.resolve())


def _check_sqlite_exists(url: str) -> None:
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        if not db.is_file():
            raise fail(f"no watermark evidence store at {db}", 2)


def verify_ownership(
    suspect: Annotated[str, typer.Option(
        help="The suspect: an OIP address http(s)://HOST:PORT/v2/models/NAME, an "
             "OpenAI-compatible base URL (with --suspect-api openai), or a model file "
             "(.skops, .onnx)", show_default=False)],
    model: Annotated[str, typer.Option(help="The protected model's name in the config",
                                       show_default=False)],
    principal: Annotated[str | None, typer.Option(
        help="Only the answers this principal received \\[default: every principal's]",
        show_default=False)] = None,
    config: ConfigOption = None,
    suspect_key: Annotated[str, typer.Option(
        envvar=KEY_ENV, show_envvar=True, help="Bearer key for the suspect endpoint")] = "",
    suspect_model: Annotated[str | None, typer.Option(
        help="Model name at the suspect address, if it does not end in /v2/models/NAME",
        show_default=False)] = None,
    suspect_api: Annotated[str, typer.Option(
        help="How to ask an http(s) suspect: oip, or openai (chat completions; the reply's "
             "text is the label)")] = "oip",
    suspect_prompt: Annotated[str, typer.Option(
        help="openai: the user message, with {features} for the row as a JSON list"
    )] = "{features}",
    max_queries: Annotated[int, typer.Option(
        min=1, help="Most recorded inputs asked of the suspect (marks first, then controls; "
                    "each distinct input once)")] = 2000,
    alpha: Annotated[float, typer.Option(
        help="Significance level of the verdict (the combined p-value must be <= it)"
    )] = 1e-6,
    out: Annotated[Path | None, typer.Option(
        help="Folder for evidence.json and evidence.html "
             "\\[default: ./evidence-MODEL-UTCTIME]", show_default=False)] = None,
    signing_key: Annotated[Path | None, typer.Option(
        help="Ed25519 private key PEM that signs the bundle "
             "\\[default: audit.checkpoint_key_file]", show_default=False)] = None,
    include_inputs: Annotated[bool, typer.Option(
        help="Put the inputs themselves in the bundle (float32 bytes, base64), not only "
             "their SHA-256")] = False,
    reference_pool: Annotated[str | None, typer.Option(
        help="Fingerprint: labelled rows of the model's domain (sklearn:NAME or a "
             ".npz/.npy/.csv/.parquet file with labels; the training data is best). Models "
             "trained there choose keyed fingerprint points and calibrate its null; enables "
             "the test that needs no marked answers", show_default=False)] = None,
    label_column: Annotated[str | None, typer.Option(
        help="--reference-pool: the column holding the true labels (csv/parquet)",
        show_default=False)] = None,
    references: Annotated[int, typer.Option(
        min=3, help="Fingerprint: independent models trained on --reference-pool to "
                    "calibrate its null (held out from choosing the points)")] = 30,
    fingerprint_points: Annotated[int, typer.Option(
        min=10, help="Fingerprint points asked of the suspect")] = 200,
    timestamp_url: Annotated[str | None, typer.Option(
        help="RFC 3161 time-stamping authority URL for the signed bundle "
             "\\[default: watermark.timestamp_url]", show_default=False)] = None,
    trust: Annotated[list[str] | None, typer.Option(
        "--trust", help="A type in a skops file to trust; repeat for more")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON")] = False,
) -> None:
    """Test whether a suspect model was made from this model's watermarked answers."""
    from ..watermark import bundle, timestamp
    from ..watermark.keyring import EvidenceCipher, Keyring
    from ..watermark.marking import Watermarker
    from ..watermark.store import evidence_store_from_url
    from ..watermark.suspect import suspect_from
    from ..watermark.verify import gather, verify

    path, settings, ws = watermark_settings(config)
    if settings.model(model) is None:
        raise fail(f"no model {model!r} in {path}", 2)
    if not 0 < alpha < 1:
        raise fail(f"--alpha {alpha}: must be between 0 and 1", 2)
    if suspect_api not in ("oip", "openai"):
        raise fail(f"--suspect-api {suspect_api!r}: use oip or openai", 2)
    key_path = signing_key or settings.audit.checkpoint_key_file
    if key_path is None:
        raise fail("no signing key: pass --signing-key PEM or set audit.checkpoint_key_file "
                   "(make one with `modelfence audit keygen`)", 2)
    _check_sqlite_exists(ws.evidence_store)
    trusted = tuple(trust or ())
    if suspect_api == "oip":
        check_skops_trust(suspect, trusted, what="suspect")
    try:
        private = bundle.load_signing_key(key_path)
        keyring = Keyring.from_settings(ws)
        marker = Watermarker.from_settings(ws, keyring)
        cipher = (EvidenceCipher.from_file(ws.evidence_key_file)
                  if ws.evidence_key_file is not None else None)
        store = evidence_store_from_url(ws.evidence_store)

        async def load() -> Evidence:
            await store.open()
            try:
                return await gather(store, model, principal=principal, marker=marker,
                                    cipher=cipher)
            finally:
                await store.close()

        evidence = asyncio.run(load())
        plan = _fingerprint_plan(settings, model, reference_pool, label_column, references,
                                 fingerprint_points, keyring.active.derive(
                                     b"fingerprint:" + model.encode()),
                                 keyring.active.id, trusted)
        target = suspect_from(suspect, key=suspect_key, model=suspect_model,
                              trusted_types=trusted, api=suspect_api, template=suspect_prompt)
    except StoreError as exc:
        raise fail(str(exc)) from None
    except ModelfenceError as exc:
        raise fail(str(exc), 2 if isinstance(exc, ConfigurationError) else 1) from None
    try:
        fingerprint = None
        if plan is not None:
            with console.status("building the fingerprint (training reference models)…"):
                fingerprint = plan.build()
        with console.status(f"asking {target.description}…"):
            doc = verify(evidence, target, max_queries=max_queries, alpha=alpha,
                         include_inputs=include_inputs, fingerprint=fingerprint)
        signed = bundle.sign(doc, private)
    except RequestError as exc:
        raise fail(f"the suspect answered {exc.status}: {exc.message}") from None
    except ConfigurationError as exc:
        raise fail(str(exc), 2) from None
    except ModelfenceError as exc:
        raise fail(str(exc)) from None
    finally:
        target.close()
    signed, ts_problem = timestamp.stamp_or_note(signed, timestamp_url or ws.timestamp_url)
    folder = out or Path(f"evidence-{model}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
    json_path, html_path = bundle.write(signed, folder)
    if ts_problem:
        err_console.print(f"[yellow]not timestamped:[/] {escape(ts_problem)}; the signed "
                          "bundle was written without one")
    _print_outcome(signed, json_path, html_path, json_out)


def _fingerprint_plan(settings: Settings, model: str, reference_pool: str | None,
                      label_column: str | None, calibrators: int, points: int, key: bytes,
                      key_id: str, trusted: tuple[str, ...]) -> FingerprintPlan | None:
    """What the fingerprint is built from (`verify.FingerprintPlan`); None without a pool."""
    if reference_pool is None:
        return None
    from ..redteam.data import load_pool
    from ..redteam.victims import victim_source
    from ..watermark.verify import FingerprintPlan

    entry = settings.model(model)
    assert entry is not None
    if not isinstance(entry.backend, LocalBackend):
        raise ConfigurationError(f"fingerprinting needs model {model!r} as a local model file; "
                                 "it is served from an upstream server")
    check_skops_trust(entry.backend.path, (*entry.backend.trusted_types, *trusted),
                      what=f"model {model}:",
                      remedy=f"each with --trust, or list them under models[{model}]"
                             ".backend.trusted_types")
    protected = victim_source(entry.backend.path,
                              trusted_types=(*entry.backend.trusted_types, *trusted)).load()
    pool = load_pool(reference_pool, n_features=protected.n_features,
                     label_column=label_column)
    if pool.y is None:
        raise ConfigurationError(f"--reference-pool {reference_pool}: needs the true labels "
                                 "(an .npz with y, or --label-column)")
    return FingerprintPlan(_labeler(protected), pool.x, pool.y, key, points, calibrators,
                           key_id)


def _labeler(victim: Any) -> Any:
    classes = victim.classes

    def labels(x: Any) -> list[str]:
        idx = victim.ask(x).labels
        return [str(classes[i]) if classes is not None else str(i) for i in idx]
    return labels


def _print_outcome(doc: dict[str, Any], json_path: Path, html_path: Path,
                   json_out: bool) -> None:
    from ..watermark.stats import format_p

    verdict = doc["verdict"]
    tests = doc["tests"]
    sets = tests.get("sets") or []
    fp = tests.get("fingerprint")
    if json_out:
        console.print_json(orjson.dumps({
            "accused": verdict["accused"], "log2_p": verdict["log2_p"],
            "p_value": verdict["p_value"], "alpha": verdict["alpha"],
            "convicting_set": verdict["convicting_set"], "summary": verdict["summary"],
            "reasons": verdict["reasons"],
            "sets": [{k: s.get(k) for k in (
                "set", "kind", "marks", "controls", "mark_disagreements", "decoy_hits",
                "control_disagreements", "tested", "log2_p", "log2_p_adjusted")}
                for s in sets],
            "fingerprint": None if fp is None else {
                "log2_p": fp["log2_p"], "points": fp.get("points"),
                "agreements": fp.get("agreements")},
            "combined": tests.get("combined"),
            "bundle": str(json_path), "html": str(html_path)}).decode())
        return
    head = "[bold red]copy identified[/]" if verdict["accused"] else "[bold]not identified[/]"
    console.print(f"{head}: {escape(verdict['summary'])}", soft_wrap=True)
    if verdict["convicting_set"]:
        console.print(f"convicting set: {escape(verdict['convicting_set'])}")
    table = tables.Grid(("set", "marks", "controls", "disagree m / c", "p", "adjusted p"),
                         right=("marks", "controls", "disagree m / c"),
                         whole=("p", "adjusted p"))
    for s in sets:
        table.add_row(escape(str(s["set"])), str(s["marks"]), str(s["controls"]),
                      f"{s['mark_disagreements']} / {s['control_disagreements']}",
                      format_p(s["log2_p"]),
                      format_p(s["log2_p_adjusted"]) if s["tested"] else "not tested")
    if sets:
        console.print(table)
    if fp is not None:
        console.print(f"fingerprint: p = {format_p(fp['log2_p'])} ({fp.get('agreements')} of "
                      f"{fp.get('points')} points agree)")
    console.print(f"p-value {format_p(verdict['log2_p'])} (log2 p = {verdict['log2_p']:.2f})")
    for reason in verdict["reasons"]:
        console.print(f"  - {escape(reason)}", soft_wrap=True)
    console.print(f"evidence: {json_path} (signed), {html_path}")


@watermark_app.command("keygen")
def keygen(path: Annotated[Path, typer.Argument(help="Where to write the new key")]) -> None:
    """Write a random 256-bit key (64 hex characters, mode 0600): a watermark secret or an
    evidence key."""
    from ..watermark.keyring import write_new_key

    try:
        write_new_key(path)
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    console.print(f"wrote {escape(str(path))}: list it under watermark.keys (secret_file) or "
                  "as watermark.evidence_key_file")


@watermark_app.command("records")
def records(
    model: Annotated[str, typer.Option(help="The model", show_default=False)],
    wide: Annotated[bool, typer.Option(
        "--wide", "-w", help="Also the tenant and the year (wider than 80 columns)")] = False,
    config: ConfigOption = None,
) -> None:
    """Who holds watermarked answers of a model: records per principal."""
    from ..watermark.store import evidence_store_from_url

    _, _, ws = watermark_settings(config)
    _check_sqlite_exists(ws.evidence_store)
    try:
        store = evidence_store_from_url(ws.evidence_store)
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None

    async def load() -> list[Any]:
        await store.open()
        try:
            return list(await store.holdings(model))
        finally:
            await store.close()

    try:
        rows = asyncio.run(load())
    except ModelfenceError as exc:
        raise fail(str(exc)) from None
    # kind ("watermark", "control") and times stay whole; the tenant and year go to --wide
    table = tables.Grid(("principal", *(["tenant"] if wide else []), "kind", "records",
                         "first (UTC)", "last (UTC)"), right=("records",),
                        whole=("kind", "first (UTC)", "last (UTC)"))
    when = "%Y-%m-%d %H:%M" if wide else "%m-%d %H:%M"
    for h in rows:
        table.add_row(*(escape(str(v)) for v in (
            h.principal, *([h.tenant] if wide else []), h.kind, h.count,
            _when(h.first_us, when), _when(h.last_us, when))))
    console.print(table)


def _when(us: int, fmt: str) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime(fmt)


@watermark_app.command("detect-text")
def detect_text(
    model: Annotated[str, typer.Option(help="The LLM's name in the config (a local: model "
                                       "with text_watermark)", show_default=False)],
    config: ConfigOption = None,
    text: Annotated[str | None, typer.Option(help="The text to test", show_default=False)
                    ] = None,
    file: Annotated[Path | None, typer.Option(help="A UTF-8 file holding the text to test",
                                              show_default=False)] = None,
    alpha: Annotated[float, typer.Option(
        help="Significance level: watermarked when the p-value is <= it")] = 1e-6,
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON")] = False,
) -> None:
    """Test a text for a local LLM's text watermark: exit 0 watermarked, 1 not, 2 errors.

    The text is re-tokenized with the model's own tokenizer; the key is derived from the
    config's server secret and the model name, as the gateway derives it.
    """
    from ..watermark.llm_text import TextWatermark, text_watermark_key

    path, settings = settings_from(config)
    entry = next((m for m in settings.llm.models if m.name == model), None)
    if entry is None:
        raise fail(f"no LLM {model!r} under llm.models in {path}", 2)
    folder = entry.local_path
    if folder is None or entry.text_watermark is None:
        raise fail(f"LLM {model!r} has no text watermark: only a local: model with "
                   "text_watermark set is watermarked", 2)
    if (text is None) == (file is None):
        raise fail("give the text with exactly one of --text or --file", 2)
    if not 0 < alpha < 1:
        raise fail(f"--alpha {alpha}: must be between 0 and 1", 2)
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise fail(f"cannot read {file}: {exc}", 2) from None
    assert text is not None
    try:
        secret = settings.server_secret()
    except ModelfenceError as exc:
        raise fail(str(exc), 2) from None
    try:
        from transformers import AutoConfig, AutoTokenizer
    except ImportError:
        raise fail("detect-text needs the `llm` extra (transformers)", 2) from None
    try:
        tokenizer: Any = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        vocab = int(AutoConfig.from_pretrained(folder, local_files_only=True).vocab_size)
    except (OSError, ValueError) as exc:
        raise fail(f"cannot load the tokenizer of {model!r} from {folder}: {exc}", 2) from None
    wm = entry.text_watermark
    detector = TextWatermark(text_watermark_key(secret, model), vocab, wm.gamma, wm.delta)
    found = detector.detect_text(text, tokenizer, alpha=alpha)
    if json_out:
        console.print_json(orjson.dumps({"model": model, **found.as_dict()}).decode())
    else:
        head = "[bold red]watermarked[/]" if found.watermarked else "[bold]not watermarked[/]"
        console.print(f"{head}: {found.green} of {found.tokens_scored} tokens scored are green "
                      f"(expected {found.gamma * found.tokens_scored:.1f} by chance)")
        console.print(f"z = {found.z:.2f}, p-value = {found.p_value:.3g} ({found.method}; "
                      f"alpha {alpha:g})")
    raise typer.Exit(0 if found.watermarked else 1)
