"""What ztunnel knows: workloads and compiled policies, rebuilt as one immutable snapshot per config
revision (so a connection is judged against one consistent view)."""
