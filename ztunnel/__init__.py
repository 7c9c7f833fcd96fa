"""The per-node L4 proxy (HBONE over mTLS) and the waypoint (built on the foundation next)."""
