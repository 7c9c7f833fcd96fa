"""The proxy side of the config stream."""
