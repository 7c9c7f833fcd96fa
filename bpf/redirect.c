// SPDX-License-Identifier: GPL-2.0
/* Entry points of the ambientmesh datapath; logic lives in lib/redirect.h.
 * Compiled by BCC at load time with -DPIN_DIR="...". Overhead: one hash lookup per packet on a
 * pod veth; at ztunnel's eth0 one or two socket lookups per packet. */
#include "lib/redirect.h"

int pod_out(struct __sk_buff *skb)
{
	return from_pod(skb);
}

int pod_in(struct __sk_buff *skb)
{
	return to_pod(skb);
}

int zt_in(struct __sk_buff *skb)
{
	return at_ztunnel(skb);
}
