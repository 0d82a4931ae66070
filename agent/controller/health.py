"""HTTP endpoints of the controller: `/healthz` and `/metrics`, served on the controller's loop.

`/healthz` returns 200 while the event loop runs and the operator has started, 503 before; it is
served by the same loop as the reconciles, so a blocked loop fails the probe. Its body lists
warnings that a restart would not fix (a missing peering object), one per line.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HealthEndpoints:
    """Serves the endpoints on `address` until `stop` is awaited."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        registry: CollectorRegistry,
        healthy: Callable[[], bool],
        warnings: Callable[[], list[str]] = list,
    ) -> None:
        self.address = address
        self.registry = registry
        self.healthy = healthy
        self.warnings = warnings
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host=self.address[0], port=self.address[1])
        await site.start()
        server = site._server  # the bound socket gives the port chosen for port 0
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.address[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.healthy():
            lines = ["ok", *(f"warning: {warning}" for warning in self.warnings())]
            return web.Response(text="\n".join(lines) + "\n")
        return web.Response(status=503, text="starting\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
