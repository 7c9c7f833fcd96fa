"""Config distribution: compile the cluster into mesh config and stream it to proxies."""
