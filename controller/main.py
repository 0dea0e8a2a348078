"""Assembling and running the controller process: store, southbound, service, RESTCONF."""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl

from aiohttp import web

from controller.api import ControllerBackend
from controller.config import ControllerConfig, load_topology
from controller.northbound.restconf import build_app
from controller.service import ClientFactory, Controller, ControllerSettings
from controller.southbound.asyncssh_client import AsyncsshNodeClient
from controller.southbound.ncclient_client import NcclientNodeClient
from controller.store import Store

log = logging.getLogger(__name__)


def client_factory(name: str) -> ClientFactory:
    return NcclientNodeClient if name == "ncclient" else AsyncsshNodeClient


def _tls(cfg: ControllerConfig) -> ssl.SSLContext | None:
    if cfg.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.tls.cert, cfg.tls.key)
    if cfg.tls.client_ca is not None:
        ctx.load_verify_locations(cfg.tls.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def run_controller(cfg: ControllerConfig, stop: asyncio.Event) -> None:
    store = Store(cfg.data_dir / "controller.sqlite")
    if cfg.topology is not None:
        nodes, spans = load_topology(cfg.topology, username=cfg.username, password=cfg.password)
        with store.transaction():
            for n in nodes:
                store.put_node(n)
            for s in spans:
                store.put_span(s)
    controller = Controller(
        store,
        client_factory(cfg.client),
        ControllerSettings(confirm_timeout_s=cfg.confirm_timeout_s, step_timeout_s=cfg.timeout_s),
    )
    await controller.start()
    controller.topology()
    # The topology and its caches live for the whole run: keep them out of the cyclic GC's scans
    # (at 10,000 nodes a full collection otherwise pauses path computation for tens of ms).
    gc.freeze()
    backend = ControllerBackend(controller)
    backend.default_credentials = {"username": cfg.username, "password": cfg.password}
    app = build_app(backend, users=cfg.users or None)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.restconf_host, cfg.restconf_port, ssl_context=_tls(cfg))
    await site.start()
    scheme = "https" if cfg.tls else "http"
    log.info("controller: RESTCONF on %s://%s:%s/restconf", scheme, cfg.restconf_host, cfg.restconf_port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await controller.stop()
        store.close()
