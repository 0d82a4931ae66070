"""Whether the Kubernetes API server responds, as judged by the controller's own requests.

kopf retries its watches without telling its handlers, so the controller watches the API server
through its own `KubeClient` requests (reconciles, status writes, the lease loop, probes):
`MonitoredKubeClient` records each one in an `ApiHealth`. A request counts as failed when no
HTTP response came back (status 0: refused, reset, timed out) or the server returned 5xx. Any
other response, a 404 or 409 included, shows that the server is up.

`ApiServer` names the server's URL and where that URL came from, for the messages a user reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.controller.kube import KubeApiError, KubeClient, Login
from agent.logs import log_event
from agent.sync import backoff_delay

logger = logging.getLogger("agent.controller")

# Every API server serves it, and its default RBAC rules let any client read it.
API_PROBE_PATH = "/version"
# The shortest time one probe may take, so that a start timeout of 0 still tries once.
MIN_PROBE_SECONDS = 2.0
# The source of a login function that the caller gave (tests); the default login names its own.
CUSTOM_LOGIN = "the login function given to the controller"
SERVICE_ACCOUNT = "the pod's service account (in-cluster configuration)"


@dataclass(frozen=True)
class ApiServer:
    """The API server's URL and the configuration that named it."""

    url: str
    source: str

    def describe(self) -> str:
        return f"{self.url} (from {self.source})"

    def fix(self) -> str:
        """Return what a user should check when the server does not respond."""
        if self.source.startswith("kubeconfig"):
            return (
                "check the server address in that kubeconfig (or point KUBECONFIG at the right "
                "file) and that the API server is up"
            )
        if self.source == SERVICE_ACCOUNT:
            return "check that the API server is up and that network policies let this pod reach it"
        return "check that the API server is up and reachable"


class ApiHealth:
    """The time since which every request to the API server has failed, and the last error.

    Times are from `clock` (monotonic seconds). It is not thread-safe, so only the controller's
    event loop records in it.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # When the first failed request since the last success was sent; None while healthy.
        self.failing_since: float | None = None
        self.last_success: float | None = None
        self.last_error = ""

    def succeeded(self) -> None:
        self.last_success = self.clock()
        self.failing_since = None
        self.last_error = ""

    def failed(self, *, sent: float, error: str) -> None:
        """Record a failed request that was sent at `sent` (a clock reading)."""
        if self.failing_since is None:
            # A request sent before the last success cannot date the outage earlier than that.
            start = sent if self.last_success is None else max(sent, self.last_success)
            self.failing_since = start
        self.last_error = error

    def outage_seconds(self) -> float:
        """Return how long every request has failed; 0.0 while the server responds."""
        if self.failing_since is None:
            return 0.0
        return max(0.0, self.clock() - self.failing_since)

    def idle_seconds(self) -> float:
        """Return the time since the last request that got a response, or infinity if none."""
        if self.last_success is None:
            return float("inf")
        return self.clock() - self.last_success


def unreachable(error: KubeApiError) -> bool:
    """Tell whether an error means the API server did not respond usefully (no response or
    a 5xx), as opposed to a response that concerns the request itself."""
    return error.status == 0 or error.status >= 500


class MonitoredKubeClient(KubeClient):
    """A `KubeClient` that records the outcome of every request in an `ApiHealth`."""

    def __init__(self, login: Login, *, health: ApiHealth) -> None:
        super().__init__(login)
        self.health = health

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        sent = self.health.clock()
        try:
            result = await super().request(
                method, path, body=body, params=params, content_type=content_type
            )
        except KubeApiError as error:
            if unreachable(error):
                self.health.failed(sent=sent, error=str(error))
            else:
                self.health.succeeded()
            raise
        self.health.succeeded()
        return result


class ApiUnreachableError(Exception):
    """The API server did not respond at start; the message names it, its source and the fix."""


async def wait_for_api(client: KubeClient, server: ApiServer, *, timeout: float) -> None:
    """Send `GET /version` until the API server responds, retrying with backoff for up to
    `timeout` seconds (0 tries once).

    Any response but 401 and 5xx counts, because it shows the server is up. Raises
    ApiUnreachableError when the time runs out or the server rejects the credentials.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            # A server that accepts the connection but never responds would otherwise hold
            # the start for the client's whole request timeout.
            async with asyncio.timeout(max(deadline - loop.time(), MIN_PROBE_SECONDS)):
                await client.request("GET", API_PROBE_PATH)
            return
        except TimeoutError:
            problem = f"GET {API_PROBE_PATH}: no response"
        except KubeApiError as error:
            if error.status == 401:
                raise ApiUnreachableError(
                    f"the Kubernetes API server {server.describe()} rejected the credentials "
                    f"(401 Unauthorized); {_credentials_fix(server)}"
                ) from None
            if not unreachable(error):
                return
            problem = str(error)
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise ApiUnreachableError(
                f"cannot reach the Kubernetes API server {server.describe()} within "
                f"{timeout:g} s: {problem}; {server.fix()}"
            )
        delay = min(backoff_delay(attempt), remaining)
        log_event(
            logger,
            logging.WARNING,
            "api_server_unreachable",
            server=server.url,
            attempt=attempt,
            retry_in_s=round(delay, 1),
            error=problem,
        )
        await asyncio.sleep(delay)


def outage_warning(health: ApiHealth, server: ApiServer, *, after: float) -> str | None:
    """Return the /healthz warning while every request has failed for `after` seconds or more,
    else None."""
    outage = health.outage_seconds()
    if health.failing_since is None or outage < after:
        return None
    return (
        f"the Kubernetes API server {server.url} has not responded for {outage:.0f} s "
        f"(last error: {health.last_error}), so reconciles fail and are retried; "
        f"{server.fix()}"
    )


async def watch_api(
    client: KubeClient, health: ApiHealth, server: ApiServer, *, probe_seconds: float, after: float
) -> None:
    """Probe the API server whenever no request got a response for `probe_seconds`, and log
    when an outage has lasted `after` seconds and when it ends. Runs until cancelled."""
    warned = False
    while True:
        if health.idle_seconds() >= probe_seconds:
            with contextlib.suppress(KubeApiError):
                await client.request("GET", API_PROBE_PATH)
        if not warned and outage_warning(health, server, after=after) is not None:
            warned = True
            log_event(
                logger,
                logging.WARNING,
                "api_server_down",
                server=server.url,
                failing_for_s=round(health.outage_seconds()),
                error=health.last_error,
            )
        elif warned and health.failing_since is None:
            warned = False
            log_event(logger, logging.INFO, "api_server_back", server=server.url)
        await asyncio.sleep(probe_seconds)


def _credentials_fix(server: ApiServer) -> str:
    if server.source.startswith("kubeconfig"):
        return "renew the token or certificate of the current context in that kubeconfig"
    if server.source == SERVICE_ACCOUNT:
        return "check that the pod's service account token is mounted and not expired"
    return "check the credentials of the login function"
