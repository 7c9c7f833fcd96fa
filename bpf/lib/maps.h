/* Maps shared by the programs and the node agent, pinned under PIN_DIR with names ending in
 * MAP_VERSION (both -D cflags, bpf/loader.py): BCC silently reuses a pinned map whatever its
 * layout, so a layout change must change MAP_VERSION. An agent of another version (an upgrade
 * or a downgrade, RELIABILITY F-15) then builds its own maps instead of misreading these, fills
 * them by reconciling (each entry before the programs that read it replace the old ones, and
 * ztunnel's program last: no gap), and removes the other version's pins. Layouts mirrored in
 * bpf/loader.py. */
#ifndef AMBIENTMESH_MAPS_H
#define AMBIENTMESH_MAPS_H

#include "verdicts.h"

#define MAX_PODS 4096

/* An enrolled pod of this node, keyed by its IPv4 address (network order). */
struct endpoint {
	__u32 ifindex; /* host-side veth, for diagnostics */
	__u32 flags;
};

/* Where ztunnel is on this node. One entry (key 0), written by the node agent. */
struct config {
	__u32 zt_ifindex;   /* ztunnel's host-side veth, in the node netns */
	__be32 zt_ip;       /* ztunnel's own address: its own traffic is never steered */
	__u8 zt_mac[6];     /* ztunnel's eth0 MAC: bpf_redirect() needs it as destination */
	__u16 _pad;
	__u32 mark;         /* set on assigned packets; ztunnel's netns routes it locally */
};

BPF_TABLE_PINNED("hash", __be32, struct endpoint, enrolled, MAX_PODS, PIN_DIR "/enrolled_" MAP_VERSION);
BPF_TABLE_PINNED("array", __u32, struct config, config, 1, PIN_DIR "/config_" MAP_VERSION);
BPF_TABLE_PINNED("percpu_array", __u32, __u64, verdicts, V_MAX, PIN_DIR "/verdicts_" MAP_VERSION);

static __always_inline int count(__u32 verdict, int action)
{
	__u64 *n = verdicts.lookup(&verdict);

	if (n)
		*n += 1;
	return action;
}

#endif
