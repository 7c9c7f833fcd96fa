"""Regression: the node agent exited every drift check (2 s) on a signal it never got.

pyroute2 forks a helper child to open netlink sockets in another netns; with asyncio's
add_signal_handler the child inherited the loop's signal wakeup fd, and a signal pyroute2 sent its
helper reached our loop as SIGTERM. The agent must not install a wakeup fd.
"""

from __future__ import annotations

import ast
from pathlib import Path

MAIN = Path(__file__).resolve().parents[2] / "node_agent" / "main.py"


def test_node_agent_does_not_use_loop_signal_handlers() -> None:
    tree = ast.parse(MAIN.read_text())
    calls = {
        n.func.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    }
    assert "add_signal_handler" not in calls
    assert "set_wakeup_fd" not in calls
