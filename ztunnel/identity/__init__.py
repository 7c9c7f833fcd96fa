"""Workload identities held by ztunnel: verification of peers, the certificate manager, CA client.

`verify` (pure) is used by every TLS endpoint; `schedule` (pure) decides when to renew; `manager`
(asyncio) keeps one certificate per local identity; `caclient` talks to the controller's CA.
"""
