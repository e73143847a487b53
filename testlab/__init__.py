"""testlab: the lab kit that the host tests (tests/conftest.py and the test
modules), the benchmarks (bench/), the demo (tools/demo.py) and the VM tests
(tests/vm/vmlib.py) share. One module per kind of thing:

  run         sh(), waiting, unique names, files others may read, spawn()/run_py()
              in a cgroup / netns / user, the pam-vrf CLI from the checkout
  users       throwaway users and groups (removed with their processes)
  net         network namespaces, veth pairs
  cgroups     the cgroup2 mount, members, removing a tree
  pam         PAM service files of the lab's own
  helper      pam-vrf-helper as in production (Helper, its argv, its socket dir)
  sshd        an sshd of the lab's own (Sshd)
  syslogsink  a syslog receiver bind-mounted over /dev/log (SyslogSink)
  hoststate   what a run may leave behind (HostState)
  progs       the programs tests and benchmarks run in a child (the flood client,
              the attack agent, answer servers, PAM drivers...), one module each
  fdflood, egress, pidreuse
              attack programs run by path or pieced together (see each)

Plain standard library: no pytest, no pam_vrf import at module level (the VM
tests and the demo use the installed package; the helper's ping imports
pam_vrf.client when called). The repository root is on sys.path through the
pytest configuration (setup.cfg: pythonpath); the benchmarks and the demo put
it there themselves. It is not installed.
"""
