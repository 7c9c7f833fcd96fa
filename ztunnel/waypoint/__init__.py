"""The waypoint: an L7 proxy for HTTP authorization, reached through HBONE (issue 7, in progress:
the authorization engine is here; the proxy process is not yet)."""
