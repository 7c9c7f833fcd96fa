"""eBPF programs (C, compiled by BCC at load time) and their Python-side definitions."""
