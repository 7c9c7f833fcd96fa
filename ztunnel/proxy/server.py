"""The L4 proxy: the outbound and inbound halves (`outbound`, `inbound`, on `core`) joined, with
the lifecycle of their listeners. Decisions come from `routing` (pure); the halves do the I/O.

Listeners (ztunnel's ports): 15001 outbound capture, 15006 inbound plaintext capture, 15008 HBONE
(mTLS), and 15080 SOCKS5 (test entry, off unless configured). Fail closed: without a snapshot, or
without the certificate of the identity concerned, nothing is forwarded.
"""

from __future__ import annotations

import asyncio

from ztunnel.proxy import sockets
from ztunnel.proxy.core import ProxySettings
from ztunnel.proxy.inbound import InboundProxy
from ztunnel.proxy.outbound import OutboundProxy
from ztunnel.proxy.splice import Held

__all__ = ["Proxy", "ProxySettings"]


class Proxy(OutboundProxy, InboundProxy):
    """One node's L4 proxy: both halves, and the lifecycle of their listeners."""

    async def start(self) -> None:
        s = self.settings
        specs = [
            ("outbound", s.listen_ip, s.outbound_port, self._on_outbound),
            ("inbound_plain", s.listen_ip, s.inbound_plain_port, self._on_inbound_plain),
        ]
        if s.socks_port:
            # Loopback only, as ztunnel's: from a pod it would be an entry that no capture put
            # there (RELIABILITY C-6; a regression test pins it).
            specs.append(("socks5", "127.0.0.1", s.socks_port, self._on_socks))
        loop = asyncio.get_running_loop()
        for name, ip, port, on_made in specs:
            transparent = s.transparent and name != "socks5"
            sock = sockets.listener(ip, port, transparent=transparent)
            server = await loop.create_server(lambda cb=on_made: Held(cb), sock=sock)  # type: ignore[misc]
            self.servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]
        self.ports["hbone"] = s.hbone_port
        await self.sync_hbone_listeners()

    def stop_listening(self) -> None:
        for server in self.servers:
            server.close()
        for listener in self.hbone.values():
            listener.server.close()
        self.hbone.clear()

    async def drain(self, deadline_s: float) -> None:
        """Stop accepting (listeners closed, new streams refused), let open connections finish
        until the deadline, then cut them."""
        self.draining = True
        self.stop_listening()
        # RELIABILITY F-4(b): peers learn at once (GOAWAY NO_ERROR) and open new tunnels to
        # our replacement, while the tunnels they have go on until they end or the deadline.
        for conn in list(self.hbone_conns):
            conn.drain()
        self.pool.drain()
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        # Connections still being set up (accepted, tunnel not yet up) count as open too.
        while (self.active or self._tasks) and loop.time() < end:
            await asyncio.sleep(0.05)
        for record in list(self.active.values()):
            record.abort("drain deadline")
        self.pool.close()
        for conn in list(self.hbone_conns):
            conn.goaway(reason="drain deadline")

    def recheck_policies(self) -> int:
        """F-10: after a config change, close open connections that policy now denies."""
        snap, closed = self.snapshot(), 0
        for record in list(self.active.values()):
            if record.recheck is not None and (reason := record.recheck(snap)) is not None:
                record.abort(f"policy changed: {reason}")
                closed += 1
        return closed
