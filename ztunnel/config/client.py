"""The config stream's client: hold the controller's latest good mesh config.

Connects over TLS 1.3 (ALPN h2) to the controller's 15012, checks the peer is the controller's
SPIFFE identity, authenticates with the node's bootstrap token (as Istio's ztunnel presents its
service-account token), and opens one stream. Every update is validated whole before it is
applied (`api.meshconfig.apply_update`): a bad one is NACKed with its reason and the previous
good state keeps serving. A dropped stream reconnects with jittered backoff (0.5 s → 30 s) and
resyncs from a fresh snapshot; the held state keeps serving meanwhile (RELIABILITY F-6). PINGs
every 10 s; 30 s of silence ends a half-dead connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from api.meshconfig import ConfigError, Resource, apply_update
from api.spiffe import SpiffeId
from common import tls
from common.stream import MessageChannel
from ztunnel.identity.caclient import controller_rejected

log = logging.getLogger("ztunnel.config")

PATH = "/v1/config/stream"
CONNECT_TIMEOUT_S = 5.0
PING_INTERVAL_S = 10.0
DEAD_AFTER_S = 30.0
BACKOFF_S = (0.5, 30.0)
READ_CHUNK = 256 * 1024

OnUpdate = Callable[[dict[str, Resource], int], None]
OnReject = Callable[[dict[str, Any]], None]


class ClientMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            "ambientmesh_config_connected",
            "1 while the config stream to the controller is open",
            registry=registry,
        )
        self.version = Gauge(
            "ambientmesh_config_version", "Config version applied (ACKed)", registry=registry
        )
        self.last_update = Gauge(
            "ambientmesh_config_last_update_timestamp_seconds",
            "When the held config was last confirmed by the controller (staleness)",
            registry=registry,
        )
        self.crl_refused = Counter(
            "ambientmesh_config_crl_refused",
            "CRLs from the controller refused (not signed by a trusted CA, unreadable)",
            registry=registry,
        )
        self.updates = Counter(
            "ambientmesh_config_updates",
            "Updates received, by result (ack, nack)",
            ["result"],
            registry=registry,
        )


class ConfigClient:
    def __init__(
        self,
        host: str,
        port: int,
        token: str | Callable[[], str],
        bundle_pem: Sequence[str],
        *,
        controller: SpiffeId,
        on_update: OnUpdate,
        metrics: ClientMetrics,
        on_reject: OnReject | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.token = token if callable(token) else lambda: token
        self.controller = controller
        self.on_update = on_update
        self.on_reject = on_reject
        """Called with a rejected update (the proxy fails closed for what it would change)."""
        self.metrics = metrics
        self.state: dict[str, Resource] = {}
        self.version = 0
        self.last_error = ""
        self._synced_in_session = False  # a session that synced resets the backoff
        self._tls = tls.client_context(bundle_pem, alpn=["h2"])

    async def run(self) -> None:
        delay = BACKOFF_S[0]
        while True:
            self._synced_in_session = False
            try:
                await self._session()
            except (OSError, ssl.SSLError, TimeoutError, ConfigStreamError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                log.warning("config stream: %s; retrying", self.last_error)
            finally:
                self.metrics.connected.set(0)
            delay = BACKOFF_S[0] if self._synced_in_session else min(delay * 2, BACKOFF_S[1])
            await asyncio.sleep(random.uniform(delay / 2, delay))  # noqa: S311 - jitter

    async def _session(self) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self._tls, server_hostname=""
            )
        try:
            if reason := controller_rejected(writer.get_extra_info("ssl_object"), self.controller):
                raise ConfigStreamError(f"peer is not the controller: {reason}")
            channel = MessageChannel(client_side=True)
            channel.open(PATH, {"authorization": f"Bearer {self.token()}"})
            writer.write(channel.data_to_send())
            self.metrics.connected.set(1)
            silent_since = time.monotonic()
            while not channel.closed:
                try:
                    data = await asyncio.wait_for(reader.read(READ_CHUNK), PING_INTERVAL_S)
                except TimeoutError:
                    if time.monotonic() - silent_since > DEAD_AFTER_S:
                        raise ConfigStreamError("controller silent; reconnecting") from None
                    channel.ping()
                    writer.write(channel.data_to_send())
                    continue
                if not data:
                    raise ConfigStreamError("controller closed the connection")
                silent_since = time.monotonic()
                for message in channel.receive(data):
                    self._synced_in_session |= self._handle(channel, message)
                if channel.response_status not in (None, 200):
                    raise ConfigStreamError(
                        f"controller refused the stream: {channel.response_status}"
                    )
                writer.write(channel.data_to_send())
            raise ConfigStreamError(channel.close_reason)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _handle(self, channel: MessageChannel, message: dict[str, Any]) -> bool:
        """Apply one update; True when it was an accepted snapshot."""
        if message.get("type") != "update":
            return False
        reply = {"nonce": message.get("nonce"), "version": message.get("version")}
        try:
            new = apply_update(self.state, message)
            version = int(message["version"])
            self.on_update(new, version)
        except ConfigError as exc:
            self.metrics.updates.labels(result="nack").inc()
            log.warning("rejected config version %s: %s", message.get("version"), exc)
            channel.send({"type": "nack", **reply, "error": str(exc)})
            if self.on_reject is not None:
                self.on_reject(message)
            return False
        self.state, self.version = new, version
        self.metrics.updates.labels(result="ack").inc()
        self.metrics.version.set(version)
        self.metrics.last_update.set(time.time())
        channel.send({"type": "ack", **reply})
        return bool(message.get("snapshot"))


class ConfigStreamError(Exception):
    """The stream ended or the controller broke its protocol."""
