"""Small shared pieces: HTTP/1.1 over asyncio (h11), TLS contexts, X.509 helpers."""
