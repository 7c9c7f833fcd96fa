"""The node agent: loads and attaches the eBPF redirection, keeps its maps in step."""
