"""Names and apt from a placed session, in the test VM (issue 10 item 1), and
`pam-vrf exec default` (item 4).

The lab (vm_names): dnsmasq in both peers on 10.99.0.2 answers
pvtest-where.lab with 10.99.0.77 (mgmt-peer) or 10.99.0.88 (prod-peer), so
an answer names the VRF its query went through; only mgmt-peer knows
pvtest-repo.lab and serves the apt repository (HTTP, 10.99.0.2:8080). Root
logs in over ssh under a temporary rule `root mgmt services=sshd` (apt needs
root), so its login is placed in mgmt like anyone's.

- plain set-up: resolv.conf `nameserver 10.99.0.2`, nsswitch `files dns`:
  getent, apt-get update and apt-get install work from the placed session;
  the same look-ups unplaced get prod-peer's answers;
- systemd-resolved (stub 127.0.0.53, nss-resolve): what works and what does
  not, each proven here (see README "Names and apt inside a VRF");
- `pam-vrf doctor` in the VM: 0 on the healthy plain set-up, non-zero with
  the resolver finding when the VRF has no route to the nameserver;
- `pam-vrf exec default`: works for a user whose rule grants it, refused
  for one whose rule does not, both logged by the helper.

Everything is put back afterwards, also on failure: resolver files,
resolved's state, servers, the apt source, lists and package, vrf.conf.
"""

import contextlib
import json
import os
import pwd
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vm_names  # noqa: E402
import vmlib  # noqa: E402
from vm_names import ANSWERS, APT_INSTALL, APT_UPDATE, DNS_PROBE, REPO, STUB, WHERE  # noqa: E402
from vmlib import PAM_VRF, PY, PROBE, VRF, peers, run  # noqa: E402,F401 (peers: a fixture)

from pam_vrf.doctor.routes import LAST_METRIC  # noqa: E402  (vrf.rst's metric: after every other default)

pytestmark = vmlib.vm_only

ROOT_RULE = f"root {VRF} services=sshd"
UDP_L3MDEV = "/proc/sys/net/ipv4/udp_l3mdev_accept"


def placed(steps):
    """The steps in root's ssh login, which must be placed in mgmt."""
    out = vm_names.placed_script("root", steps)
    cgroup, identify = out["session"][1].split()
    assert cgroup.endswith(f"/vrf/{VRF}") and identify == VRF, out["session"]
    return out


def first_address(text):
    words = text.split()
    return words[0] if words else ""


@contextlib.contextmanager
def lab_servers():
    with vm_names.dns_servers() as dns, vm_names.apt_repository() as http:
        yield dns, http


APT_STEPS = [("apt-get update", APT_UPDATE), ("apt-get install", APT_INSTALL),
             ("installed", f"dpkg-query -W {vm_names.PACKAGE}; cat {vm_names.PACKAGE_FILE}")]


def assert_apt_worked(out, http_log):
    for name, _ in APT_STEPS:
        assert out[name][0] == 0, (name, out[name])
    assert "installed from the repository behind mgmt-peer" in out["installed"][1]
    assert os.path.exists(vm_names.PACKAGE_FILE)
    requests = vm_names.read(http_log)
    assert "GET /Packages" in requests or "GET /./Packages" in requests, requests
    assert f"{vm_names.PACKAGE}_1.0_all.deb" in requests, requests
    assert "10.99.0.1 " in requests, requests       # from veth-mgmt's address


# --- (a) plain resolv.conf ------------------------------------------------------------------

def test_plain_resolv_conf_names_and_apt_from_a_placed_session():
    with lab_servers() as (dns, http), vm_names.plain_resolver(), vm_names.apt_source(), \
            vmlib.vrf_conf(ROOT_RULE):
        # Unplaced, the same look-ups reach prod-peer's server: WHERE has its
        # other address there and REPO does not exist.
        unplaced = run("getent", "hosts", WHERE, check=False)
        assert first_address(unplaced.stdout) == ANSWERS["prod-peer"], unplaced
        assert run("getent", "hosts", REPO, check=False).returncode == 2

        out = placed([("getent where", f"getent hosts {WHERE}"), ("getent repo", f"getent hosts {REPO}"),
                      ("python getaddrinfo", f"{PY} -c 'import socket; print(socket.gethostbyname(\"{WHERE}\"))'"),
                      ("curl", f"curl -sS -o /dev/null -w '%{{http_code}}' http://{REPO}:{vm_names.HTTP_PORT}/Release"),
                      *APT_STEPS])
        vm_names.report("plain resolv.conf: placed in mgmt", out)
        assert out["getent where"][0] == 0, out["getent where"]
        assert first_address(out["getent where"][1]) == ANSWERS["mgmt-peer"], out["getent where"]
        assert first_address(out["getent repo"][1]) == vm_names.PEER_ADDR, out["getent repo"]
        assert out["python getaddrinfo"] == (0, ANSWERS["mgmt-peer"]), out["python getaddrinfo"]
        assert out["curl"] == (0, "200"), out["curl"]
        assert_apt_worked(out, http)
        assert vm_names.queries(dns["mgmt-peer"], REPO), "mgmt-peer's dnsmasq saw no query for the repository"

    # A resolver on the default VRF's loopback (a local dnsmasq on 127.0.0.1):
    # it answers unplaced processes, not the placed session; doctor: error.
    with vm_names.dns_server(None, "127.0.0.1", [(WHERE, "10.99.0.66")]), vm_names.plain_resolver("127.0.0.1"), \
            vmlib.vrf_conf(ROOT_RULE):
        assert first_address(run("getent", "hosts", WHERE).stdout) == "10.99.0.66"
        out = placed([("getent where", f"timeout 60 getent hosts {WHERE}"),
                      ("route", "ip route get 127.0.0.1 vrf mgmt")])
        vm_names.report("plain resolv.conf, nameserver 127.0.0.1 (local dnsmasq): placed in mgmt", out)
        assert out["getent where"][0] == 2, out["getent where"]
        proc = run(PAM_VRF, "doctor", check=False, timeout=120)
        print(f"\n===== pam-vrf doctor (exit {proc.returncode})\n{proc.stdout}{proc.stderr}")
        assert proc.returncode == 1
        assert f"error   resolver: /etc/resolv.conf: nameserver 127.0.0.1 is not reachable through VRF {VRF}" \
            in proc.stdout


# --- (b) systemd-resolved -------------------------------------------------------------------------

@contextlib.contextmanager
def udp_l3mdev_kept():
    before = vm_names.read(UDP_L3MDEV).strip()
    try:
        yield before
    finally:
        with open(UDP_L3MDEV, "w") as f:
            f.write(before)


def doctor():
    proc = run(PAM_VRF, "doctor", check=False, timeout=120)
    print(f"\n===== pam-vrf doctor (exit {proc.returncode})\n{proc.stdout}{proc.stderr}")
    return proc


def test_systemd_resolved_with_per_link_dns_on_the_vrf_link_names_and_apt_from_a_placed_session():
    """nss-resolve: getaddrinfo() asks resolved over AF_UNIX (no VRF binds it);
    resolved asks veth-mgmt's server from its own socket on veth-mgmt, which
    goes through mgmt (mgmt-peer answers). Names and apt work; the answers are
    the same for every process of the host, placed or not."""
    with lab_servers() as (dns, http), vm_names.resolved_resolver(), vm_names.apt_source(), \
            vmlib.vrf_conf(ROOT_RULE), udp_l3mdev_kept() as l3mdev:
        vm_names.link_dns("veth-mgmt")
        print(run("resolvectl", "status", check=False).stdout)
        out = placed([("getent where", f"getent hosts {WHERE}"), ("getent repo", f"getent hosts {REPO}"),
                      ("python getaddrinfo", f"{PY} -c 'import socket; print(socket.gethostbyname(\"{WHERE}\"))'"),
                      ("resolvectl query", f"resolvectl query {WHERE}"),
                      ("curl", f"curl -sS -o /dev/null -w '%{{http_code}}' http://{REPO}:{vm_names.HTTP_PORT}/Release"),
                      *APT_STEPS,
                      ("udp_l3mdev_accept=0: getent where",
                       f"sysctl -qw net.ipv4.udp_l3mdev_accept=0 && getent hosts {WHERE}; "
                       f"rc=$?; sysctl -qw net.ipv4.udp_l3mdev_accept={l3mdev}; exit $rc")])
        vm_names.report("systemd-resolved, per-link DNS on veth-mgmt: placed in mgmt", out)
        for name in ("getent where", "python getaddrinfo", "udp_l3mdev_accept=0: getent where"):
            assert out[name][0] == 0 and first_address(out[name][1]) == ANSWERS["mgmt-peer"], (name, out[name])
        assert first_address(out["getent repo"][1]) == vm_names.PEER_ADDR, out["getent repo"]
        assert f"{WHERE}: {ANSWERS['mgmt-peer']}" in out["resolvectl query"][1] \
            and "-- link: veth-mgmt" in out["resolvectl query"][1], out["resolvectl query"]
        assert out["curl"] == (0, "200"), out["curl"]
        assert_apt_worked(out, http)
        # resolved's queries left through veth-mgmt: mgmt-peer saw them, prod-peer none.
        for name in (WHERE, REPO):
            assert [q for q in vm_names.queries(dns["mgmt-peer"], name) if "from 10.99.0.1" in q], name
            assert not vm_names.queries(dns["prod-peer"], name), vm_names.read(dns["prod-peer"])
        # resolved serves the whole host: unplaced, the same (mgmt's) answer.
        unplaced = run("getent", "hosts", WHERE, check=False)
        assert first_address(unplaced.stdout) == ANSWERS["mgmt-peer"], unplaced

        proc = doctor()
        assert proc.returncode == 0, proc.stdout
        assert "ok      resolver: /etc/nsswitch.conf: systemd-resolved (nss-resolve in /etc/nsswitch.conf): " \
               f"getaddrinfo() in sessions placed in {VRF} asks resolved over AF_UNIX, and resolved asks " \
               f"10.99.0.2 on veth-mgmt (domains: ~lab)" in proc.stdout
        assert "ok      resolver: /etc/nsswitch.conf: systemd-resolved's server 10.99.0.2 on veth-mgmt answers " \
               f"through VRF {VRF}" in proc.stdout
        assert f"warning resolver: /etc/resolv.conf: nameserver 127.0.0.53 is not reachable through VRF {VRF}" \
            in proc.stdout and "(dig, host, nslookup) are affected" in proc.stdout


def test_systemd_resolved_what_does_not_work_in_a_vrf():
    """- the stub 127.0.0.53 does not answer a socket bound to mgmt: not with
      udp_l3mdev_accept 1 or 0, not with 127.0.0.1/8 on the VRF device; so
      whatever reads resolv.conf itself (the NSS dns module, dig) fails there;
    - with nsswitch `files dns` (no nss-resolve) names fail in the session
      although they resolve outside it: doctor, error;
    - with the DNS server on a default-VRF link only, a placed session's names
      are resolved through the default VRF (prod-peer answers): doctor, warning."""
    mount_lo = False
    try:
        with vm_names.dns_servers() as dns, vm_names.resolved_resolver(), vmlib.vrf_conf(ROOT_RULE), \
                udp_l3mdev_kept() as l3mdev:
            vm_names.link_dns("veth-mgmt")
            stub = f"{DNS_PROBE} {STUB}"
            counters = (f"{PY} -c 'l = [x.split() for x in open(\"/proc/net/snmp\") if x.startswith(\"Udp:\")]; "
                        f"d = dict(zip(l[0][1:], l[1][1:])); print(\"udp\", d[\"InDatagrams\"], d[\"NoPorts\"])'")
            mount_lo = True
            out = placed([
                ("route to the stub", f"ip route get {STUB} vrf {VRF}"),
                ("stub", f"{counters}; {stub}; {counters}"),
                ("nss dns module", f"timeout 60 getent -s hosts:dns hosts {WHERE}"),
                ("stub, udp_l3mdev_accept=0", f"sysctl -qw net.ipv4.udp_l3mdev_accept=0 && {stub}; "
                                              f"sysctl -qw net.ipv4.udp_l3mdev_accept={l3mdev}"),
                ("127.0.0.1/8 on the VRF", f"ip addr add 127.0.0.1/8 dev {VRF} && ip route get {STUB} vrf {VRF}"),
                ("stub, VRF loopback", f"{counters}; {stub}; {counters}"),
                ("stub, VRF loopback, udp_l3mdev_accept=0",
                 f"sysctl -qw net.ipv4.udp_l3mdev_accept=0 && {stub}; sysctl -qw net.ipv4.udp_l3mdev_accept={l3mdev}"),
                ("nss dns module, VRF loopback", f"timeout 60 getent -s hosts:dns hosts {WHERE}"),
                ("VRF loopback removed", f"ip addr del 127.0.0.1/8 dev {VRF}"),
            ])
            vm_names.report("systemd-resolved: the stub from a session placed in mgmt", out)
            for name in ("stub", "stub, udp_l3mdev_accept=0", "stub, VRF loopback",
                         "stub, VRF loopback, udp_l3mdev_accept=0"):
                assert f"'{STUB}': 'unreachable: " in out[name][1], (name, out[name])
            for name in ("nss dns module", "nss dns module, VRF loopback"):
                assert out[name][0] == 2, (name, out[name])
            # The query would leave by lo (the local table wins over the VRF's):
            # the egress program drops it (EPERM). Before it, it reached the stub,
            # whose answer, coming in on lo, matched no socket (NoPorts).
            for name in ("stub", "stub, VRF loopback"):
                text = out[name][1]
                (before, after) = [list(map(int, line.split()[1:])) for line in text.splitlines()
                                   if line.startswith("udp ")]
                answered_nowhere = after[0] - before[0] >= 2 and after[1] - before[1] >= 2
                assert "Operation not permitted" in text or answered_nowhere, (name, text)
            assert "Operation not permitted" in out["stub"][1], out["stub"]
            # Outside the VRF the stub answers.
            assert run("getent", "-s", "hosts:dns", "hosts", WHERE).stdout.split()[0] == ANSWERS["mgmt-peer"]

            # nsswitch without nss-resolve: names fail in the VRF, work outside.
            vm_names.set_hosts_line(vm_names.PLAIN_HOSTS)
            out = placed([("getent where", f"timeout 60 getent hosts {WHERE}")])
            vm_names.report("systemd-resolved running, nsswitch `files dns`: placed in mgmt", out)
            assert out["getent where"][0] == 2, out["getent where"]
            assert first_address(run("getent", "hosts", WHERE).stdout) == ANSWERS["mgmt-peer"]
            proc = doctor()
            assert proc.returncode == 1, proc.stdout
            assert f"error   resolver: /etc/resolv.conf: nameserver 127.0.0.53 is not reachable through VRF {VRF}" \
                in proc.stdout
            assert "nss-resolve is not used" in proc.stdout and "put `resolve [!UNAVAIL=return]` before `dns`" \
                in proc.stdout
            vm_names.set_hosts_line(vm_names.RESOLVE_HOSTS)

            # The server on the default VRF's link only: prod-peer answers the placed session.
            run("resolvectl", "revert", "veth-mgmt")
            vm_names.link_dns("veth-prod")
            out = placed([("getent where", f"getent hosts {WHERE}")])
            vm_names.report("systemd-resolved, per-link DNS on veth-prod only: placed in mgmt", out)
            assert first_address(out["getent where"][1]) == ANSWERS["prod-peer"], out["getent where"]
            assert [q for q in vm_names.queries(dns["prod-peer"], WHERE) if "from 10.99.0.1" in q]
            proc = doctor()
            assert proc.returncode == 0, proc.stdout
            assert "warning resolver: /etc/nsswitch.conf: systemd-resolved (nss-resolve in /etc/nsswitch.conf) " \
                   f"has no DNS server on a link of VRF {VRF} (veth-mgmt)" in proc.stdout
    finally:
        if mount_lo:
            run("ip", "addr", "del", "127.0.0.1/8", "dev", VRF, check=False)


# --- (c) doctor in the VM ----------------------------------------------------------------------

@contextlib.contextmanager
def address_on(netns, dev, cidr):
    argv = ["ip"] + (["-n", netns] if netns else [])
    run(*argv, "addr", "add", cidr, "dev", dev)
    try:
        yield
    finally:
        run(*argv, "addr", "del", cidr, "dev", dev, check=False)


@contextlib.contextmanager
def without_unreachable_defaults(vrf=VRF):
    """The lab's table ends in vrf.rst's unreachable defaults (provision.sh):
    take them away for a while, to show what happens without them."""
    removed = []
    try:
        for family in ("-4", "-6"):
            run("ip", family, "route", "del", "unreachable", "default", "metric", LAST_METRIC, "vrf", vrf)
            removed.append(family)
        yield
    finally:
        for family in removed:
            run("ip", family, "route", "add", "unreachable", "default", "metric", LAST_METRIC, "vrf", vrf,
                check=False)


# Sent from a placed session (op1, @netops mgmt): one DNS query for x.lab to
# 10.98.0.2, a server only the main table routes. Prints "sent" or the errno name.
SEND_TO_PROD = (f"{PY} -c 'import errno, socket, struct; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "q = struct.pack(\"!6H\", 7, 256, 1, 0, 0, 0) + bytes([1]) + b\"x\" + bytes([3]) + b\"lab\" + bytes(1) "
                "+ struct.pack(\"!HH\", 1, 1)\n"
                "try:\n    s.sendto(q, (\"10.98.0.2\", 53)); print(\"sent\")\n"
                "except OSError as e:\n    print(errno.errorcode[e.errno])'")


def from_vrf(log):
    """The queries a dnsmasq log has from 10.99.0.1 (veth-mgmt's and veth-prod's address)."""
    return [line for line in vm_names.read(log).splitlines() if "query[" in line and " from 10.99.0.1" in line]


def test_doctor_healthy_vm_exits_0_and_a_resolver_the_vrf_cannot_route_to_is_an_error():
    # systemd-networkd adds the lab's unreachable defaults (provision.sh) once mgmt is up.
    vmlib.wait_until("the unreachable defaults of table 10", lambda: all(
        "unreachable default" in run("ip", family, "route", "show", "vrf", VRF).stdout for family in ("-4", "-6")))
    with vm_names.dns_servers(), vm_names.plain_resolver():
        proc = doctor()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"nameserver {vm_names.PEER_ADDR} answers through VRF {VRF}" in proc.stdout, proc.stdout
        assert f"ok      routes: VRF {VRF}: its table ends in a default route" in proc.stdout, proc.stdout
        findings = json.loads(run(PAM_VRF, "doctor", "--json", timeout=120).stdout)
        assert not [f for f in findings if f["level"] == "error"], findings
        assert {f["check"] for f in findings} >= {"kernel", "helper", "config", "routes", "pam", "self-test",
                                                  "resolver"}
        # Without vrf.rst's unreachable defaults, placed sessions can send into
        # the default VRF's networks: an error.
        with without_unreachable_defaults():
            proc = doctor()
            assert proc.returncode == 1, proc.stdout + proc.stderr
            errors = [line for line in proc.stdout.splitlines() if line.startswith("error")]
            assert len(errors) == 1 and errors[0].startswith(
                f"error   routes: VRF {VRF}: its table has no IPv4 and IPv6 default route (an address it has no "
                f"route for is looked up in the main table next"), proc.stdout
            assert f"ip -4 route add unreachable default metric {LAST_METRIC} vrf {VRF}" in errors[0], errors

    # 10.98.0.2: prod-peer's second address, routed in the main table only.
    with address_on(None, "veth-prod", "10.98.0.1/24"), address_on("prod-peer", "eth0", "10.98.0.2/24"), \
            vm_names.dns_server("prod-peer", "10.98.0.2", [("x.lab", "10.98.0.9")]) as log, \
            vm_names.plain_resolver("10.98.0.2"):
        assert first_address(run("getent", "hosts", "x.lab").stdout) == "10.98.0.9"
        # The lab's table 10 ends in an unreachable default: no route to it from the VRF.
        assert "No route to host" in run("ip", "route", "get", "10.98.0.2", "vrf", VRF, check=False).stderr
        proc = doctor()
        assert proc.returncode == 1, proc.stdout + proc.stderr
        errors = [line for line in proc.stdout.splitlines() if line.startswith("error")]
        assert errors == [
            f"error   resolver: {vm_names.RESOLV}: nameserver 10.98.0.2 is not reachable through VRF {VRF} "
            f"(host unreachable (an unreachable route, or no neighbour answers)); it answers this command "
            f"outside the VRF (the VRF {VRF} has no "
            f"route to it: name look-ups in its sessions fail; route 10.98.0.2 through {VRF} or give the VRF's "
            f"links a DNS server they reach (resolvectl dns <link> <server>); point resolv.conf at a server "
            f"reachable through {VRF})"], proc.stdout
        assert from_vrf(log) == [], "a query from the VRF left through the default VRF"
        # The attack: a placed user sends into the default VRF's network. Refused at once.
        assert vmlib.ssh("op1", SEND_TO_PROD).stdout.split() == ["EHOSTUNREACH"]
        assert from_vrf(log) == [], "a placed session's datagram left through the default VRF"

        # Without them the lookup falls through to main, out of veth-prod: the leak.
        with without_unreachable_defaults():
            route = run("ip", "route", "get", "10.98.0.2", "vrf", VRF).stdout
            print(f"\n$ ip route get 10.98.0.2 vrf {VRF}\n{route}")
            assert "dev veth-prod" in route, route
            proc = doctor()
            assert proc.returncode == 1, proc.stdout + proc.stderr
            errors = [line for line in proc.stdout.splitlines() if line.startswith("error")]
            assert len(errors) == 2 and errors[0].startswith(
                f"error   routes: VRF {VRF}: its table has no IPv4 and IPv6 default route ("), errors
            assert errors[1].startswith(f"error   resolver: {vm_names.RESOLV}: nameserver 10.98.0.2 is not "
                                        f"reachable through VRF {VRF} ("), errors
            assert "it answers this command outside the VRF" in errors[1], errors
            assert "the query leaves through veth-prod, a link of the default VRF" in errors[1], errors
            leaked = from_vrf(log)
            print("10.98.0.2's queries from 10.99.0.1 (the doctor's socket bound to mgmt):", leaked)
            assert leaked, vm_names.read(log)
            # A placed user's datagram would follow it out of veth-prod: the egress
            # program drops it (EPERM) now; the routes check still reports the table.
            assert vmlib.ssh("op1", SEND_TO_PROD).stdout.split() == ["EPERM"]
            time.sleep(1)
            assert len(from_vrf(log)) == len(leaked), "a placed session's datagram left through the default VRF"


# --- pam-vrf exec default ------------------------------------------------------------------------

def test_exec_default_for_a_granted_user_refused_for_others_and_logged(peers):
    with vmlib.group() as granted_group, vmlib.user(granted_group) as granted, \
            vmlib.vrf_conf(f"@{granted_group} {VRF} services=sshd exec=default"):
        mark = vmlib.journal_mark()
        command = f"{PAM_VRF} exec default -- {PY} {PROBE} --traffic"
        out = vm_names.placed_script(granted, [("exec default", command)])
        vm_names.report(f"{granted}: pam-vrf exec default", out)
        session_cgroup = out["session"][1].split()[0]
        assert session_cgroup.endswith(f"/vrf/{VRF}"), out["session"]
        rc, text = out["exec default"]
        assert rc == 0, text
        probe = json.loads(text.splitlines()[-1])
        assert probe["cgroup"] == session_cgroup.rsplit("/", 1)[0], (probe["cgroup"], session_cgroup)
        assert all(probe["sockets"][k] == {"dev": "", "ifindex": 0} for k in vmlib.SOCKETS), probe
        assert set(probe["peers"].values()) == {"prod-peer"}, probe
        uid = pwd.getpwnam(granted).pw_uid
        vmlib.wait_journal(mark, ["placed pid", f"in VRF default ({probe['cgroup']}", f"uid {uid}",
                                  "(pam-vrf exec)"], SYSLOG_IDENTIFIER=vmlib.HELPER_IDENT)

        # op1: `@netops mgmt`, no exec= grant.
        mark = vmlib.journal_mark()
        out = vm_names.placed_script("op1", [("exec default", f"{PAM_VRF} exec default -- {PY} {PROBE}")])
        vm_names.report("op1: pam-vrf exec default", out)
        rc, text = out["exec default"]
        assert rc != 0 and "may not enter VRF default: no exec=default in vrf.conf" in text, (rc, text)
        assert '"cgroup"' not in text, "the command ran although refused"
        uid = pwd.getpwnam("op1").pw_uid
        vmlib.wait_journal(mark, ["refused place from pid", f"uid {uid}",
                                  "op1 may not enter VRF default: no exec=default"],
                           SYSLOG_IDENTIFIER=vmlib.HELPER_IDENT)
