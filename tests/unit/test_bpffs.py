"""Which filesystem a pin directory is on, from /proc/self/mountinfo (node_agent.bpffs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent.bpffs import filesystem_of

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
43 23 0:39 / /sys/fs/bpf rw,relatime shared:7 master:2 - bpf bpf rw
50 27 0:45 / /tmp/pins\\040here rw,relatime - bpf bpf rw
51 27 0:46 / /mnt/shadowed rw,relatime - tmpfs tmpfs rw
52 51 0:47 / /mnt/shadowed rw,relatime - bpf none rw
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/sys/fs/bpf", "bpf"),
        ("/sys/fs/bpf/ambientmesh/c1/node1", "bpf"),  # pin dirs need not exist yet
        ("/sys/fs/bpfx/pins", "sysfs"),  # a prefix of the name is not a parent
        ("/sys/kernel", "sysfs"),
        ("/var/lib/x", "ext4"),  # only the root contains it
        ("/", "ext4"),
        ("/tmp/pins here/node1", "bpf"),  # mountinfo escapes the space as \040
        ("/tmp/pins", "ext4"),
        ("/mnt/shadowed/p", "bpf"),  # mounted over: the last mount is the one seen
    ],
)
def test_filesystem_of(path: str, fstype: str) -> None:
    assert filesystem_of(Path(path), MOUNTINFO) == fstype


def test_malformed_lines_are_skipped() -> None:
    assert filesystem_of(Path("/x"), "garbage\n1 2 3\n" + MOUNTINFO) == "ext4"
