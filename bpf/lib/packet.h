/* Packet parsing for the redirection programs (IPv4 TCP, direct packet access). */
#ifndef AMBIENTMESH_PACKET_H
#define AMBIENTMESH_PACKET_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>

struct flow {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

/**
 * parse_tcp4() - fill @f from an Ethernet/IPv4/TCP packet.
 * Return: 1 for IPv4 TCP with a complete TCP header, 0 otherwise (left untouched by callers).
 * The verifier needs every header bounded by data_end before it is read.
 */
static __always_inline int parse_tcp4(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct tcphdr *tcp;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_TCP || ip->ihl < 5)
		return 0;
	tcp = (void *)ip + ip->ihl * 4;
	if ((void *)(tcp + 1) > data_end)
		return 0;
	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->sport = tcp->source;
	f->dport = tcp->dest;
	return 1;
}

#endif
