/* Verdicts of the redirection programs: one numbered registry, counted per reason in the
 * `verdicts` map and mirrored by bpf/verdicts.py (a test keeps the two equal). Append only:
 * numbers are part of the pinned map's meaning. */
#ifndef AMBIENTMESH_VERDICTS_H
#define AMBIENTMESH_VERDICTS_H

#define V_PASS_NOT_TCP            0  /* not IPv4 TCP: untouched (ztunnel is TCP only) */
#define V_PASS_NOT_ENROLLED       1  /* neither end is an enrolled local pod: untouched */
#define V_REDIRECT_OUT            2  /* pod_out: an enrolled pod's packet sent to ztunnel */
#define V_REDIRECT_IN             3  /* pod_in: a packet for an enrolled pod sent to ztunnel */
#define V_PASS_FROM_ZTUNNEL       4  /* pod_in: ztunnel dialing or answering the pod itself */
#define V_ASSIGN_ESTABLISHED      5  /* zt_in: packet of a connection ztunnel already has */
#define V_ASSIGN_OUTBOUND         6  /* zt_in: new connection from a local pod → 15001 */
#define V_ASSIGN_HBONE            7  /* zt_in: new connection to a local pod's 15008 → 15008 */
#define V_ASSIGN_INBOUND_PLAIN    8  /* zt_in: new plaintext connection to a local pod → 15006 */
#define V_PASS_ZTUNNEL_OWN        9  /* zt_in: addressed to ztunnel itself */
#define V_DROP_NO_LISTENER       10  /* zt_in: ztunnel is not listening: fail closed */
#define V_DROP_ASSIGN_FAILED     11  /* zt_in: bpf_sk_assign refused: fail closed */
#define V_DROP_NO_CONFIG         12  /* the config map is empty: fail closed */
#define V_PASS_UNRELATED         13  /* zt_in: neither a pod's connection nor ztunnel's own */
#define V_MAX                    14

#endif
