"""The ASGI app, built in one visible function from the configuration.

Outermost is Starlette's error shield (every unexpected exception becomes a bare
`{"error": "internal error"}` 500, logged server-side); then the routes; each OIP route
runs its guard chain in declared order with the backend call as the terminal. All
state lives on objects made here: nothing is global.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..artifacts.errors import ArtifactError
from ..audit import AuditGuard, AuditSink, audit_sink_from_url
from ..audit.record import event_record
from ..audit.sinks import audit_store_of
from ..audit.spill import SpillMetrics
from ..backends import ModelEntry, backend_from_settings
from ..backends.call import OipCall
from ..config import Settings, metrics_dir
from ..console.headers import SECURITY_HEADERS
from ..identity import BearerAuthenticator, build_authenticator
from ..identity.apikeys import ApiKeys
from ..identity.guard import IdentityGuard
from ..kernel.chain import Guard
from ..kernel.finish import count_failure
from ..kernel.metrics import GatewayMetrics
from ..kernel.responses import json_response
from ..kernel.stages import Stages
from ..llm.routes import LlmRoutes
from ..monitor.guard import MonitorGuard
from ..monitor.service import MonitorService
from ..policy import PolicyEngine, PolicyGuard, engine_from_settings
from ..policy.reload import PolicyReloader
from ..policy.snapshot import load_policies
from ..privacy.forms import private_models
from ..quota.budget_guard import BudgetAlert, BudgetGuard
from ..quota.budgets import BudgetStore, budget_store_from_url
from ..quota.inflight import InflightGuard
from ..quota.ratelimit import RateLimitGuard
from ..quota.usage import UsageGuard
from ..risk import PinGuard
from ..shaping.guard import ShapingGuard, build_shaping
from ..siem import Siem
from ..siem import finding as siem_finding
from ..stores import KeyStore, key_store_from_url
from ..stores.health import StoreCheck
from ..tracing import build_tracing
from ..watermark.guard import WatermarkGuard, build_watermark
from .admin import AdminApi
from .admin_auth import AdminAuthenticator
from .admin_listener import AdminListener
from .body_deadline import BodyDeadline
from .console_routes import console_routes
from .downloads import ArtifactCall, DownloadRoutes, DownloadWatch
from .grpc_listener import GrpcListener, require_grpc
from .guards import BodyGuard, InputValidationGuard, MetricsGuard, ModelLookupGuard
from .hot_routes import HotRoutes, hot_routes
from .oip_routes import (
    OIP_EXTENSIONS,
    SERVER_NAME,
    ModelVersionGuard,
    OipRoutes,
    infer_terminal,
    metadata_terminal,
)
from .proxies import ProxyHeaders
from .scrape import Scrape

if TYPE_CHECKING:
    from ..privacy.budget import PrivacyAlert
    from ..privacy.wiring import Privacy
    from ..tracing.otel import Tracing

log = logging.getLogger("modelfence.gateway")


@dataclass
class Gateway:
    """Everything one running gateway owns; opened and closed by the app's lifespan."""

    settings: Settings
    key_store: KeyStore
    keys: ApiKeys
    models: dict[str, ModelEntry]
    metrics: GatewayMetrics
    audit_sink: AuditSink
    authenticator: BearerAuthenticator
    policy: PolicyEngine
    rate_limits: RateLimitGuard
    budget_store: BudgetStore | None
    monitor: MonitorService
    watermark: WatermarkGuard | None
    siem: Siem  # alerts to the SIEM's collectors; idle without siem.destinations
    tracing: Tracing | None = None  # spans, when tracing.enabled (the 'otel' extra)

    async def start(self, *, policy_fallback: bool = False, send_alerts: bool = True) -> None:
        """Open stores, load policies and models. `policy_fallback` is for worker restarts;
        `send_alerts` False for a preflight check (the SIEM's spool is checked, not used)."""
        load_policies(self.policy, self.settings.policy.state_dir, fallback=policy_fallback)
        if send_alerts:
            await self.siem.start()
        else:
            self.siem.check()
        await self.key_store.open()
        await self.audit_sink.open()
        if self.budget_store is not None:
            await self.budget_store.open()
        await self.authenticator.start()  # loads the JWKS, if JWTs are configured
        for entry in self.models.values():
            try:
                await entry.backend.start()
            except ArtifactError as exc:  # this model is not served; the others are
                entry.refused = str(exc)
                log.error("model %s is not served: %s", entry.name, exc)
                self.siem.emit(siem_finding.artifact(entry.name, str(exc)))
                continue
            log.info("model %s ready (%s)", entry.name, entry.backend.platform)
        await self.monitor.start()
        if self.watermark is not None:
            await self.watermark.open()

    async def stop(self) -> None:
        if self.watermark is not None:
            await self.watermark.close()
        await self.monitor.stop()
        for entry in self.models.values():
            await entry.backend.close()
        await self.authenticator.close()
        await self.rate_limits.close()
        if self.budget_store is not None:
            await self.budget_store.close()
        await self.audit_sink.close()
        await self.key_store.close()
        if self.tracing is not None:  # the last spans go to the collector
            await asyncio.to_thread(self.tracing.shutdown)
        await self.siem.stop()  # what collectors did not take waits in the spool


def build_gateway(settings: Settings, *, key_store: KeyStore | None = None,
                  tracing: Tracing | None = None) -> Gateway:
    """Make (but do not open) every part the configuration names; wiring errors raise here."""
    secret = settings.server_secret()
    metrics = GatewayMetrics(metrics_dir())
    store = key_store or key_store_from_url(settings.stores.keys)
    keys = ApiKeys(store, secret, cache_ttl_s=settings.key_cache_ttl_s)
    audit_sink = audit_sink_from_url(settings.audit.sink, settings.audit, SpillMetrics(
        spilled=metrics.audit_spilled.inc, replayed=metrics.audit_replayed.inc,
        dead_letter=metrics.audit_dead_letter.inc,
        lost=metrics.audit_lost.inc, pending=metrics.audit_spill_pending))
    tracing = tracing or build_tracing(settings.tracing)
    traces = tracing.client_traces() if tracing is not None else []
    models = {m.name: ModelEntry(m, backend_from_settings(m, traces=traces))
              for m in settings.models}
    siem = Siem(settings.siem, metrics,
                llm_models=frozenset(m.name for m in settings.llm.models))
    return Gateway(
        settings=settings,
        key_store=store,
        keys=keys,
        authenticator=build_authenticator(
            settings.identity, keys,
            on_jwks_error=lambda kind: metrics.outbound_errors.labels("jwks", kind).inc()),
        models=models,
        metrics=metrics,
        audit_sink=audit_sink,
        policy=engine_from_settings(settings),
        rate_limits=RateLimitGuard(settings.quotas, on_fail_open=metrics.fail_open.inc),
        budget_store=(budget_store_from_url(settings.quotas.budget_store)
                      if settings.quotas.budgets else None),
        monitor=MonitorService(settings, audit_sink, metrics,
                               siem=siem.alert if siem.active else None),
        watermark=(build_watermark(settings.watermark, models, metrics)
                   if settings.watermark is not None else None),
        tracing=tracing,
        siem=siem,
    )


def build_app(settings: Settings, *, gateway: Gateway | None = None) -> Starlette:
    gw = gateway or build_gateway(settings)
    identity = IdentityGuard(gw.authenticator)
    # a cap on open requests per principal and tenant, right after identity in every chain
    inflight_guard = InflightGuard(per_principal=settings.server.max_inflight_per_principal,
                                   per_tenant=settings.server.max_inflight_per_tenant)
    inflight = [inflight_guard] if inflight_guard.active else []
    model = ModelLookupGuard(gw.models)
    version = ModelVersionGuard()  # the /versions/{v}/ routes: the one version served
    usage = UsageGuard(gw.budget_store)  # context.queries: the budget store's, if any
    usage.warn_if_policy_reads(settings.policy.files, settings.server.workers)
    policy = PolicyGuard(gw.policy)
    metrics = MetricsGuard(gw.metrics)
    audit = AuditGuard(gw.audit_sink, record_inputs=settings.audit.record_inputs)
    rate_limits = [gw.rate_limits] if gw.rate_limits.active else []
    # an operator's pin, after the protocol's risk guard, on every model with bands
    pins: list[Guard[Any]] = [PinGuard(gw.monitor.pins)] if gw.monitor.pin_bands else []
    monitor: list[Guard[Any]] = [MonitorGuard(gw.monitor)] if gw.monitor.monitors else []
    monitor += pins
    shaping_guard = build_shaping(gw.models, settings.server_secret(),
                                  {n: m.summary for n, m in gw.monitor.monitors.items()})
    shaping: list[Guard[OipCall]] = [shaping_guard] if shaping_guard.active else []
    # differential privacy: only where a band names a dp-* defense (the extra is optional)
    privacy = _privacy(settings, gw, shaping_guard)
    if privacy is not None:
        shaping = [privacy.guard]  # it answers private bands and hands the rest to shaping
    watermark = [gw.watermark] if gw.watermark is not None else []

    async def budget_alert(alert: BudgetAlert) -> None:
        gw.metrics.budget_alerts.labels(alert.model).inc()
        log.warning("budget alert: %s", alert.describe())
        gw.siem.emit(siem_finding.budget(alert.principal, alert.tenant, alert.model,
                                         alert.describe()))
        await gw.audit_sink.write(event_record(
            action="alert:budget", reason=alert.describe(), principal=alert.principal,
            tenant=alert.tenant, model=alert.model))

    budgets = ([BudgetGuard(gw.budget_store, settings.quotas.budgets, budget_alert)]
               if gw.budget_store is not None else [])

    # Every protocol's chains are these stages, each filling its own (kernel/stages.py).
    # The request phases run in stage order; response and complete phases bottom to top.
    common = Stages(head=[metrics, audit], identity=[identity], inflight=inflight,
                    usage=[usage, *([privacy.usage] if privacy else [])], policy=[policy],
                    rate_limits=rate_limits, budgets=budgets,
                    spans=gw.tracing.chain_spans() if gw.tracing is not None else None)
    infer_chain = common.with_(
        model=[model, version], monitor=monitor,
        body=[BodyGuard(settings.server.max_body_bytes), InputValidationGuard()],
        # response phases run bottom to top: shaping first, then the watermark, so the
        # watermark reaches labels-only answers and every later guard
        outputs=[*watermark, *shaping]).chain(OipCall)
    metadata_chain = common.with_(model=[model, version], monitor=monitor).chain(
        OipCall, through="rate_limits")

    async def download_alert(principal: str, tenant: str, model: str | None, why: str) -> None:
        reason = f"unusual artifact download by {principal} of model {model}: {why}"
        gw.metrics.download_alerts.inc()
        log.warning("download alert: %s", reason)
        gw.siem.emit(siem_finding.download(principal, tenant, model, reason))
        gw.monitor.send_webhook({"type": "download.alert", "principal": principal,
                                 "tenant": tenant, "model": model, "explanation": why})
        await gw.audit_sink.write(event_record(
            action="alert:download", reason=reason, principal=principal, tenant=tenant,
            model=model))

    download_watch = DownloadWatch(download_alert)
    download_chain = common.with_(model=[model], body=[download_watch]).chain(ArtifactCall,
                                                                              through="body")

    stores: list[tuple[str, StoreCheck]] = [("key store", gw.key_store.ping),
                                             ("audit spill", gw.audit_sink.ready)]
    if gw.rate_limits.active:
        stores.append(("rate limit store", gw.rate_limits.check_storage))
    if gw.budget_store is not None:
        stores.append(("budget store", gw.budget_store.ping))
    if gw.monitor.monitors:
        stores.append(("monitor store", gw.monitor.ping))
    if gw.watermark is not None:
        stores.append(("watermark evidence store", gw.watermark.ping))
    if privacy is not None:
        stores.append(("privacy store", privacy.store.ping))
    def screen_failure(model: str, outcome: str) -> None:
        gw.metrics.screening_failures.labels(model, outcome).inc()

    llm = LlmRoutes(settings.llm, stages=common, pins=pins,
                    audit_before_answer=settings.audit.durability == "strict",
                    noise_secret=hmac.new(settings.server_secret(), b"llm",
                                          hashlib.sha256).digest(),
                    on_alert=gw.monitor.raise_alert, on_screen_failure=screen_failure,
                    on_failure=lambda exc: count_failure(gw.metrics, exc),
                    on_distill=lambda model, outcome, n: gw.metrics.llm_distill.labels(
                        model, outcome).inc(n),
                    upstream_traces=gw.tracing.client_traces() if gw.tracing is not None else ())
    if llm.risk_stream is not None:
        stores.append(("llm risk store", llm.risk_stream.ping))
    elif llm.risk is not None and settings.llm.models and settings.server.workers > 1:
        log.warning("llm.monitor: with %d workers each scores only its own share of a "
                    "caller's requests; set llm.monitor.shared to a redis:// URL",
                    settings.server.workers)
    oip = OipRoutes(infer_chain=infer_chain, metadata_chain=metadata_chain, models=gw.models,
                    stores=stores, metrics=gw.metrics, readiness=settings.server.readiness,
                    audit_before_answer=settings.audit.durability == "strict",
                    notes={"audit": "disabled"} if gw.audit_sink.disabled else None)
    grpc_listener = None
    if settings.server.grpc_port is not None:  # the same chains, terminals and readiness
        require_grpc()
        from .grpc_service import GrpcInference

        service = GrpcInference(
            infer_chain=infer_chain, metadata_chain=metadata_chain, infer=infer_terminal,
            metadata=metadata_terminal, readiness=oip.readiness,
            server=(SERVER_NAME, __version__, OIP_EXTENSIONS),
            on_failure=lambda exc: count_failure(gw.metrics, exc),
            audit_before_answer=settings.audit.durability == "strict")
        grpc_listener = GrpcListener(
            settings.server.host, settings.server.grpc_port, service,
            max_message_bytes=settings.server.max_body_bytes,
            interceptors=[gw.tracing.rpc_interceptor()] if gw.tracing is not None else [])
    reloader = PolicyReloader(gw.policy, settings.policy.state_dir, settings.server.workers)
    admin_auth = AdminAuthenticator(settings.admin, static_token=settings.admin_token(),
                                    scoped=settings.admin_token_sha256s(),
                                    jwt=gw.authenticator.jwt)
    admin = AdminApi(gw.keys, admin_auth, policy=reloader,
                     audit=gw.audit_sink, monitor=gw.monitor,
                     llm_risk=llm.risk.book if llm.risk is not None else None,
                     privacy=privacy)

    scrape = Scrape(gw.metrics, oip.readiness, gw.monitor)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(await scrape.render(), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start(policy_fallback=True)
        if privacy is not None:
            await privacy.store.open()
        await llm.start()
        await oip.readiness.start()  # the first readiness answers know every model
        audit_store = audit_store_of(gw.audit_sink)
        if audit_store is not None:
            await download_watch.load(audit_store)
        listener = (AdminListener(settings.server.admin_listen, admin_app)
                    if settings.server.admin_listen else None)
        if listener is not None:
            await listener.start()
        if grpc_listener is not None:
            await grpc_listener.start()
        try:
            yield
        finally:
            if grpc_listener is not None:
                await grpc_listener.stop()
            if listener is not None:
                await listener.stop()
            await oip.close()
            await llm.close()
            await gw.stop()
            if privacy is not None:
                await privacy.store.close()
            gw.metrics.close()

    def spans(routes: list[Route]) -> list[Middleware]:  # a server span per request
        return [gw.tracing.middleware(routes)] if gw.tracing is not None else []

    # every body read (OIP, /v1, admin) is bounded in time; a client leaving is no failure
    deadline = Middleware(BodyDeadline, body_timeout_s=settings.server.body_timeout_s,
                          gap_timeout_s=settings.server.body_gap_timeout_s,
                          on_timeout=gw.metrics.body_timeouts.inc,
                          on_disconnect=gw.metrics.client_disconnects.inc)
    # the admin listener's app: never mounted on the public one (a 404 there, as any route)
    admin_app = Starlette(
        routes=[*admin.routes(), Route("/admin/ready", oip.ready_details, methods=["GET"]),
                Route("/metrics", metrics_endpoint, methods=["GET"]),
                *console_routes(settings, admin, budget_store=gw.budget_store,
                                watermark=gw.watermark)],
        middleware=[*spans(admin.routes()), deadline],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error})
    proxies = ([Middleware(ProxyHeaders, trusted=settings.server.trusted_proxies)]
               if settings.server.trusted_proxies else [])
    routes = [*oip.routes(), *DownloadRoutes(download_chain, oip.answer).routes(),
              *(llm.routes() if settings.llm.models else [])]
    # the POST routes (infer, the LLM's) past Starlette's router, inside every protection
    hot = Middleware(HotRoutes, routes=hot_routes(routes))
    app = Starlette(
        routes=routes,
        middleware=[*spans(routes), deadline, *proxies, hot],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.gateway = gw
    app.state.admin_app = admin_app
    return app


def _privacy(settings: Settings, gw: Gateway, shaping: ShapingGuard) -> Privacy | None:
    """The privacy parts, where some model's band is differentially private; its alerts go
    to the log, the audit log (`modelfence alerts`) and the monitor's webhook."""
    models = private_models(settings.models)
    if not models:
        return None
    from ..privacy.wiring import build_privacy

    async def alert(a: PrivacyAlert) -> None:
        gw.metrics.privacy_alerts.labels(a.model, a.scope).inc()
        log.warning("privacy alert: %s", a.describe())
        gw.siem.emit(siem_finding.privacy(a.principal, a.tenant, a.model, a.describe(),
                                          a.spent, a.budget))
        gw.monitor.send_webhook({"type": "privacy.alert", "principal": a.principal,
                                 "tenant": a.tenant, "model": a.model, "scope": a.scope,
                                 "epsilon_spent": a.spent, "epsilon_budget": a.budget})
        await gw.audit_sink.write(event_record(
            action="alert:privacy", reason=a.describe(), principal=a.principal,
            tenant=a.tenant, model=a.model))

    return build_privacy(settings, shaping, settings.server_secret(), models, alert,
                         gw.metrics)


def _error_headers(request: Request) -> dict[str, str] | None:
    """The console's security headers on its error answers too (no caching, no framing)."""
    return dict(SECURITY_HEADERS) if request.url.path.startswith("/console") else None


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "not found", 405: "method not allowed"}
    return json_response({"error": messages.get(exc.status_code, exc.detail)}, exc.status_code,
                         headers=_error_headers(request))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return json_response({"error": "internal error"}, 500, headers=_error_headers(request))
