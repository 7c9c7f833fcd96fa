"""The controller: CA, cluster watcher and config distribution (built on the foundation next)."""
