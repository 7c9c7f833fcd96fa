"""The controller: CA (this issue), cluster watcher and config distribution (next issues)."""
