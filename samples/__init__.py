"""Sample workloads for the demo and the tests, run as pod commands (`python3 -m samples.X`)."""
