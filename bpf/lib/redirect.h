/* The steering logic of design "1a" (DESIGN.md): pod veth → ztunnel, ztunnel picks a socket. */
#ifndef AMBIENTMESH_REDIRECT_H
#define AMBIENTMESH_REDIRECT_H

#include <uapi/linux/pkt_cls.h>
#include "maps.h"
#include "packet.h"

#define HBONE_PORT 15008
#define OUTBOUND_PORT 15001
#define INBOUND_PLAIN_PORT 15006

/**
 * from_pod() - tc ingress of an enrolled pod's host veth: everything the pod sends over TCP
 * goes to ztunnel (redirect_peer lands it on ztunnel's eth0 ingress without a backlog trip).
 * Traffic of pods that are not enrolled is never touched.
 */
static __always_inline int from_pod(struct __sk_buff *skb)
{
	struct flow f = {};
	__u32 zero = 0;
	struct config *cfg;

	if (!parse_tcp4(skb, &f))
		return count(V_PASS_NOT_TCP, TC_ACT_OK);
	if (!enrolled.lookup(&f.saddr))
		return count(V_PASS_NOT_ENROLLED, TC_ACT_OK);
	cfg = config.lookup(&zero);
	if (!cfg || !cfg->zt_ifindex)
		return count(V_DROP_NO_CONFIG, TC_ACT_SHOT);
	count(V_REDIRECT_OUT, 0);
	return bpf_redirect_peer(cfg->zt_ifindex, 0);
}

/**
 * to_pod() - tc egress of an enrolled pod's host veth: what comes for the pod goes to ztunnel,
 * unless ztunnel itself sends it (its dials to the pod and its answers) — except HBONE between
 * two pods of this node, which ztunnel sends to itself and must get back: to a local pod's
 * 15008, and answers *from* a local pod's 15008. An answer from port 15008 of any other
 * address is ztunnel's outbound socket answering the pod (regression: those were sent back to
 * ztunnel, so a meshed pod could not connect to a remote 15008).
 * bpf_redirect() to ztunnel's host veth needs the destination MAC of ztunnel's eth0.
 */
static __always_inline int to_pod(struct __sk_buff *skb)
{
	struct flow f = {};
	__u32 zero = 0;
	struct config *cfg;

	if (!parse_tcp4(skb, &f))
		return count(V_PASS_NOT_TCP, TC_ACT_OK);
	if (!enrolled.lookup(&f.daddr))
		return count(V_PASS_NOT_ENROLLED, TC_ACT_OK);
	cfg = config.lookup(&zero);
	if (!cfg || !cfg->zt_ifindex)
		return count(V_DROP_NO_CONFIG, TC_ACT_SHOT);
	if (skb->ingress_ifindex == cfg->zt_ifindex && f.dport != bpf_htons(HBONE_PORT) &&
	    !(f.sport == bpf_htons(HBONE_PORT) && enrolled.lookup(&f.saddr)))
		return count(V_PASS_FROM_ZTUNNEL, TC_ACT_OK);
	if (bpf_skb_store_bytes(skb, 0, cfg->zt_mac, 6, 0))
		return count(V_DROP_NO_CONFIG, TC_ACT_SHOT);
	count(V_REDIRECT_IN, 0);
	return bpf_redirect(cfg->zt_ifindex, 0);
}

/**
 * assign() - hand the packet to @port's socket (a listener, or the established connection
 * matching the packet when @port is 0), mark it for local delivery. Fails closed.
 */
static __always_inline int assign(struct __sk_buff *skb, struct flow *f, __u16 port,
				  __u32 mark, __u32 verdict)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	long err;

	t.ipv4.saddr = f->saddr;
	t.ipv4.daddr = f->daddr;
	t.ipv4.sport = f->sport;
	t.ipv4.dport = port ? bpf_htons(port) : f->dport;
	sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return port ? count(V_DROP_NO_LISTENER, TC_ACT_SHOT) : -1;
	/* Established lookups must not catch a wildcard listener (a pod dialing port 15008 of a
	 * peer is outbound traffic, not ours); listener lookups must find exactly a listener. */
	if ((sk->state == BPF_TCP_LISTEN) != (port != 0)) {
		bpf_sk_release(sk);
		return port ? count(V_DROP_NO_LISTENER, TC_ACT_SHOT) : -1;
	}
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return count(V_DROP_ASSIGN_FAILED, TC_ACT_SHOT);
	skb->mark = mark;
	return count(verdict, TC_ACT_OK);
}

/**
 * at_ztunnel() - tc ingress of ztunnel's eth0: deliver steered packets to ztunnel's sockets.
 * Existing connections first (exact 4-tuple); then new ones by direction: to a local pod's
 * 15008 → HBONE listener; from a local pod → 15001; to a local pod → 15006.
 */
static __always_inline int at_ztunnel(struct __sk_buff *skb)
{
	struct flow f = {};
	__u32 zero = 0;
	struct config *cfg;
	int ret;

	if (!parse_tcp4(skb, &f))
		return count(V_PASS_NOT_TCP, TC_ACT_OK);
	cfg = config.lookup(&zero);
	if (!cfg)
		return count(V_DROP_NO_CONFIG, TC_ACT_SHOT);
	if (f.daddr == cfg->zt_ip)
		return count(V_PASS_ZTUNNEL_OWN, TC_ACT_OK);
	ret = assign(skb, &f, 0, cfg->mark, V_ASSIGN_ESTABLISHED);
	if (ret >= 0)
		return ret;
	if (enrolled.lookup(&f.daddr) && f.dport == bpf_htons(HBONE_PORT))
		return assign(skb, &f, HBONE_PORT, cfg->mark, V_ASSIGN_HBONE);
	if (enrolled.lookup(&f.saddr))
		return assign(skb, &f, OUTBOUND_PORT, cfg->mark, V_ASSIGN_OUTBOUND);
	if (enrolled.lookup(&f.daddr))
		return assign(skb, &f, INBOUND_PLAIN_PORT, cfg->mark, V_ASSIGN_INBOUND_PLAIN);
	return count(V_PASS_UNRELATED, TC_ACT_OK);
}

#endif
