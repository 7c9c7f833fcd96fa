"""The mesh's well-known ports, one list for every component (the numbers are ztunnel's and
istiod's, so an Istio user's firewall rules and dashboards carry over)."""

from __future__ import annotations

ZTUNNEL_ADMIN = 15000  # /config_dump, loopback only
ZTUNNEL_OUTBOUND = 15001  # captured outbound connections
ZTUNNEL_INBOUND_PLAINTEXT = 15006  # captured plaintext inbound connections
HBONE = 15008  # HTTP/2 CONNECT over mTLS
ZTUNNEL_METRICS = 15020
ZTUNNEL_READINESS = 15021  # /healthz/ready
ZTUNNEL_SOCKS5 = 15080  # test entry
CONTROLLER = 15012  # CA (and config streaming)
CONTROLLER_METRICS = 15014
NODE_AGENT_METRICS = 15025

# Every port ztunnel listens on (its own list): a tunnel to one of them is a self-call (H-4).
ZTUNNEL_PORTS = frozenset(
    {
        ZTUNNEL_ADMIN,
        ZTUNNEL_OUTBOUND,
        ZTUNNEL_INBOUND_PLAINTEXT,
        HBONE,
        ZTUNNEL_METRICS,
        ZTUNNEL_READINESS,
        ZTUNNEL_SOCKS5,
    }
)

# Kept out of every pod's ephemeral range (net.ipv4.ip_local_reserved_ports, as Istio reserves
# its ports): the datapath tells HBONE apart by port 15008, so a client connection that happened
# to get source port 15008 would have its replies taken for inbound HBONE and never connect.
POD_RESERVED_PORTS = ",".join(str(p) for p in sorted(ZTUNNEL_PORTS))
