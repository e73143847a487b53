// SPDX-License-Identifier: MIT
/*
 * pam_vrf_sock.c - the pam-vrf cgroup sock-create program in restricted C.
 *
 * The same program pam_vrf.bpf.sockprog.build() assembles by hand: for every
 * AF_INET/AF_INET6 socket a process of the cgroup creates,
 *
 *   1. refuse it (socket() fails with EPERM) if it matches a deny item,
 *      or, when the program binds, if it is MPTCP (its kernel-made TCP
 *      subflows never pass this hook, so they would not be bound),
 *   2. bind it to a device          (sk->bound_dev_if = IFINDEX),
 *   3. set its mark and priority    (sk->mark = MARK, sk->priority = PRIORITY),
 *   4. let it be created            (return 1).
 *
 * Reference and cross-check only: pam-vrf never compiles or loads this file.
 * tests/test_c_program.py shows that it gives the same verdicts as the
 * assembled program. Parameters are preprocessor macros, all optional:
 *
 *   -DIFINDEX=N      bind to interface index N (the VRF device); unset: no binding
 *   -DMARK=N         SO_MARK value;     unset: left alone
 *   -DPRIORITY=N     SO_PRIORITY value; unset: left alone
 *   -DDENY='DENY_ITEM(F, T, P) DENY_ITEM(...) ...'
 *                    items in vrf.conf order; F = family, T = type, P = protocol,
 *                    numbers or ANY. vrf.conf deny=inet6,raw,inet:dgram:udp is
 *                    DENY_ITEM(10, ANY, ANY) DENY_ITEM(ANY, 3, ANY) DENY_ITEM(2, 2, 17)
 *                    (AF_INET 2, AF_INET6 10; SOCK_STREAM 1, SOCK_DGRAM 2,
 *                    SOCK_RAW 3; IPPROTO_TCP 6, IPPROTO_UDP 17, ...)
 *
 * Plain clang:  clang -target bpf -O2 -I/usr/include/$(gcc -print-multiarch) \
 *                   -DIFINDEX=4 -c pam_vrf_sock.c -o pam_vrf_sock.o
 *               (section "cgroup/sock_create", function pam_vrf, no relocations)
 * bcc:          BPF(src_file="pam_vrf_sock.c", cflags=["-DIFINDEX=4"])
 *                   .load_func("pam_vrf", BPF.CGROUP_SOCK)
 */

#ifdef BCC_SEC
/* bcc: its helpers.h has included <uapi/linux/bpf.h> already and bcc puts each
 * function into a section of its own. */
#define PAM_VRF_SEC(name)
#else
#include <linux/bpf.h>
#define PAM_VRF_SEC(name) __attribute__((section(name), used))
char _license[] PAM_VRF_SEC("license") = "GPL";
#endif

/* "Any value" in a deny item: wider than any family (u8), type (4 bits) or
 * protocol (u16) the kernel stores, so it never equals a real one. */
#define ANY (-1)

/* Is field `want` of the new socket? A constant ANY folds to "yes" at compile
 * time, so the program only reads the fields a deny item names. */
#define PAM_VRF_IS(field, want) ((want) == ANY || sk->field == (__u32)(want))

#define DENY_ITEM(family_, type_, protocol_)                                   \
	if (PAM_VRF_IS(family, family_) && PAM_VRF_IS(type, type_) &&          \
	    PAM_VRF_IS(protocol, protocol_))                                   \
		return 0;

PAM_VRF_SEC("cgroup/sock_create")
int pam_vrf(struct bpf_sock *sk)
{
#ifdef DENY
	DENY
#endif
#ifdef IFINDEX
	DENY_ITEM(2, 1, 262)	/* AF_INET, SOCK_STREAM, IPPROTO_MPTCP */
	DENY_ITEM(10, 1, 262)	/* AF_INET6 */
	sk->bound_dev_if = IFINDEX;
#endif
#ifdef MARK
	sk->mark = MARK;
#endif
#ifdef PRIORITY
	sk->priority = PRIORITY;
#endif
	return 1;
}
