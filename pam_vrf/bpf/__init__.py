"""eBPF for pam-vrf: an instruction builder, bpf(2) through ctypes, and the
cgroup sock-create program. No compiler, no libbpf, no PAM knowledge."""
