"""The controller: the CA, the cluster watcher and config distribution to every proxy."""
