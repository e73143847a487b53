"""Name resolution from inside a VRF.

A socket bound to a VRF routes through the VRF's table: a resolver on the
default VRF's loopback (systemd-resolved's stub 127.0.0.53, a local dnsmasq
or unbound on 127.0.0.1 / ::1) is not reachable from it. What that breaks
depends on the hosts line of nsswitch.conf (proven in the test VM,
tests/vm/test_vm_names.py):

  plain (`hosts: files dns`)  glibc's dns module asks the servers of
      resolv.conf from the session's own, VRF-bound socket: they must be
      reachable through the VRF (a loopback stub is not: names fail);
  systemd-resolved (`resolve [!UNAVAIL=return]` before dns, resolved
      running)  getaddrinfo() asks resolved over an AF_UNIX socket, which no
      VRF binds; resolved does the DNS itself, for the whole host, with the
      servers of the link a name is routed to. A server on a link enslaved to
      the VRF is asked through the VRF; without one, a placed session's names
      are resolved through the default VRF's servers. Programs that read
      resolv.conf themselves (dig, host, nslookup, glibc's dns module) ask
      the stub from the VRF and fail.

static() says what applies from the files and resolved's link settings;
probe() is the live test (UDP query for ". NS", 1 s timeout, 2 tries, every
server at once) the self-test children run from inside each VRF, and the
doctor itself runs from resolved's per-link servers' links.
"""

import errno
import ipaddress
import json
import os
import re
import select
import socket
import struct
import subprocess
import time
from collections import namedtuple

from pam_vrf.doctor import Finding

DNS_PORT = 53
IMPLICIT = "127.0.0.1"      # what the resolver library uses when resolv.conf names none
STUB = "127.0.0.53"
STUBS = (STUB, "127.0.0.54")  # systemd-resolved's stub and its proxy stub
NSSWITCH = "/etc/nsswitch.conf"
VARLINK = "/run/systemd/resolve/io.systemd.Resolve"     # what nss-resolve connects to
SYS_NET = "/sys/class/net"
NSS_FIX = "put `resolve [!UNAVAIL=return]` before `dns` on the hosts line of /etc/nsswitch.conf " \
          "(package libnss-resolve)"
LINK_FIX = "resolvectl dns {link} <server>; resolvectl domain {link} '~<domain>' (persistent: DNS= and " \
           "Domains= in the link's systemd-networkd .network file)"


class Resolved(namedtuple("Resolved", "nss_resolve running links")):
    """nss_resolve: `resolve` comes before `dns` on nsswitch.conf's hosts line;
    running: resolved answers on its varlink socket (what nss-resolve uses);
    links: {ifname: (servers, domains)} as resolvectl reports them."""
    __slots__ = ()

    @property
    def in_use(self):
        """getaddrinfo() goes to systemd-resolved (not to resolv.conf's servers)."""
        return self.nss_resolve and self.running


def hosts_sources(path=NSSWITCH):
    """The services on the hosts line of nsswitch.conf, in order, without the
    [STATUS=action] items (glibc's default `dns files` when there is none)."""
    try:
        with open(path, errors="replace") as f:
            for line in f:
                words = line.split("#", 1)[0].split()
                if words and words[0] == "hosts:":
                    text = re.sub(r"\[[^]]*\]", " ", " ".join(words[1:]))
                    return text.split()
    except OSError:
        pass
    return ["dns", "files"]


def nss_resolve_first(sources):
    return "resolve" in sources and ("dns" not in sources or sources.index("resolve") < sources.index("dns"))


def resolved_running(path=VARLINK):
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(2)
            s.connect(path)
        return True
    except OSError:
        return False


def _resolvectl(verb):
    try:
        proc = subprocess.run(["resolvectl", "--no-pager", verb], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^Link \d+ \(([^)]+)\):(.*)$", line.strip())
        if m:
            out[m.group(1)] = m.group(2).split()
    return out


def resolved_links():
    """{ifname: (servers, domains)} of every link resolved has servers or domains for."""
    servers, domains = _resolvectl("dns"), _resolvectl("domain")
    return {link: (servers.get(link, []), domains.get(link, [])) for link in set(servers) | set(domains)
            if servers.get(link) or domains.get(link)}


def resolved_setup(nsswitch=NSSWITCH):
    running = resolved_running()
    return Resolved(nss_resolve_first(hosts_sources(nsswitch)), running, resolved_links() if running else {})


def vrf_links(vrf, sys_net=SYS_NET):
    """The links enslaved to the VRF device `vrf` (their `master`)."""
    out = []
    try:
        names = sorted(os.listdir(sys_net))
    except OSError:
        return out
    for name in names:
        try:
            if os.path.basename(os.readlink(os.path.join(sys_net, name, "master"))) == vrf:
                out.append(name)
        except OSError:
            continue
    return out


def _server_address(server):
    """resolvectl's "10.0.0.1", "10.0.0.1:53#name" or "[fe80::1%2]:53" -> the address."""
    server = server.split("#", 1)[0]
    m = re.match(r"^\[([^]]+)\](?::\d+)?$", server)
    if m:
        return m.group(1)
    if server.count(":") == 1:
        return server.split(":", 1)[0]
    return server


def vrf_servers(resolved, vrf, sys_net=SYS_NET):
    """[(link, server address, domains)] resolved asks through `vrf`."""
    out = []
    for link in vrf_links(vrf, sys_net):
        servers, domains = resolved.links.get(link, ([], []))
        out += [(link, _server_address(s), domains) for s in servers]
    return out


def nameservers(path):
    """(servers in file order, problem text or None)."""
    servers = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                words = line.split("#", 1)[0].split(";", 1)[0].split()
                if len(words) >= 2 and words[0] == "nameserver":
                    servers.append(words[1])
    except OSError as e:
        return [IMPLICIT], f"cannot read {path} ({e.strerror}): the resolver library then asks {IMPLICIT}"
    if not servers:
        return [IMPLICIT], f"no nameserver line in {path}: the resolver library then asks {IMPLICIT}"
    return servers, None


def is_loopback(server):
    try:
        return ipaddress.ip_address(server.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def static(findings, path, vrfs, nsswitch=NSSWITCH):
    """Check 7, static part; returns the nameservers for the live part."""
    servers, problem = nameservers(path)
    resolved = resolved_setup(nsswitch)
    if problem:
        findings.append(Finding("resolver", "warning", problem,
                                "name resolution in placed sessions then depends on a local resolver",
                                "list the DNS servers in resolv.conf", path))
    loopback = [s for s in servers if is_loopback(s)]
    for vrf in vrfs:
        if resolved.in_use:
            _resolved_findings(findings, resolved, vrf, nsswitch)
        for server in loopback:
            findings.append(_loopback_finding(server, vrf, resolved, path, nsswitch))
    if not vrfs:
        return servers
    if not loopback:
        findings.append(Finding("resolver", "ok", f"nameservers {', '.join(servers)}: none on loopback",
                                path=path))
    return servers


def _loopback_finding(server, vrf, resolved, path, nsswitch):
    what = "systemd-resolved's stub" if server in STUBS else "a resolver"
    text = f"nameserver {server}: {what} on the default VRF's loopback is not reachable from a socket bound " \
           f"to VRF {vrf.name}"
    if resolved.in_use:
        return Finding("resolver", "warning", text,
                       f"getaddrinfo() goes to systemd-resolved (nss-resolve in {nsswitch}) and is not affected, "
                       f"but programs that read resolv.conf themselves (dig, host, nslookup) fail in sessions "
                       f"placed in {vrf.name}",
                       f"in those sessions name the server (dig @<server reachable through {vrf.name}>) or use "
                       f"getent hosts / resolvectl query", path)
    if server in STUBS:
        stopped = "; systemd-resolved is not running" if resolved.nss_resolve else ""
        return Finding("resolver", "warning", text,
                       f"glibc's dns module asks it from the session's socket, bound to {vrf.name}: name look-ups "
                       f"in sessions placed in {vrf.name} fail (nss-resolve is not used{stopped})",
                       f"{NSS_FIX}, with systemd-resolved running and a DNS server on a link of {vrf.name} "
                       f"({LINK_FIX.format(link='<link>')}); or point resolv.conf at a server reachable through "
                       f"{vrf.name}", path)
    return Finding("resolver", "warning", text,
                   f"name look-ups in sessions placed in {vrf.name} fail (or wait for the timeout)",
                   f"point resolv.conf at a server reachable through {vrf.name}, or give the VRF's links their DNS "
                   f"server in systemd-resolved ({LINK_FIX.format(link='<link>')}) and {NSS_FIX}", path)


def _resolved_findings(findings, resolved, vrf, nsswitch, sys_net=SYS_NET):
    pairs = vrf_servers(resolved, vrf.name, sys_net)
    if pairs:
        asked = ", ".join(f"{server} on {link} (domains: {' '.join(domains) or 'none'})"
                          for link, server, domains in pairs)
        findings.append(Finding(
            "resolver", "ok", f"systemd-resolved (nss-resolve in {nsswitch}): getaddrinfo() in sessions placed "
            f"in {vrf.name} asks resolved over AF_UNIX, and resolved asks {asked}: link(s) of {vrf.name}, so "
            f"through {vrf.name}", path=nsswitch))
        return
    links = vrf_links(vrf.name, sys_net)
    findings.append(Finding(
        "resolver", "warning", f"systemd-resolved (nss-resolve in {nsswitch}) has no DNS server on a link of VRF "
        f"{vrf.name} ({', '.join(links) if links else 'no link is enslaved to it'})",
        f"getaddrinfo() in sessions placed in {vrf.name} goes to resolved over AF_UNIX, which no VRF binds, and "
        f"resolved asks the default VRF's servers: names only {vrf.name}'s DNS server knows do not resolve, and "
        f"the look-ups leave through the default VRF",
        LINK_FIX.format(link=links[0] if links else f"<link of {vrf.name}>"), nsswitch))


def query_packet(ident):
    """A DNS query for the root's NS records (". IN NS"), recursion desired."""
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + b"\x00" + struct.pack("!HH", 2, 1)


def is_answer(data, ident):
    return len(data) >= 12 and struct.unpack("!H", data[:2])[0] == ident and data[2] & 0x80


def _address(server):
    info = socket.getaddrinfo(server, DNS_PORT, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
    return info[0][0], info[0][4]


def probe(servers, timeout=1.0, tries=2, device=None):
    """{server: "reachable" | "unreachable: why"}, every server queried at once;
    from sockets bound to `device` if given (as systemd-resolved binds them for
    a link's servers)."""
    result, pending = {}, {}
    for server in servers:
        try:
            family, address = _address(server)
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except (OSError, socket.gaierror) as e:
            result[server] = f"unreachable: {e.strerror or e}"
            continue
        try:
            if device:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
            sock.connect(address)       # ICMP errors (port/host unreachable) then show on recv
        except OSError as e:
            result[server] = f"unreachable: {_why(e)}"
            sock.close()
            continue
        ident = struct.unpack("!H", os.urandom(2))[0]
        pending[sock] = (server, ident)
    try:
        for _ in range(tries):
            for sock, (server, ident) in list(pending.items()):
                try:
                    sock.send(query_packet(ident))
                except OSError as e:
                    result[server] = f"unreachable: {_why(e)}"
                    del pending[sock]
                    sock.close()
            deadline = time.monotonic() + timeout
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ready, _, _ = select.select(list(pending), [], [], left)
                for sock in ready:
                    server, ident = pending[sock]
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        result[server] = f"unreachable: {_why(e)}"
                    else:
                        if not is_answer(data, ident):
                            continue
                        result[server] = "reachable"
                    del pending[sock]
                    sock.close()
            if not pending:
                break
        for sock, (server, _) in pending.items():
            result[server] = f"unreachable: no answer within {tries} x {timeout:g}s"
    finally:
        for sock in pending:
            sock.close()
    return result


def _why(e):
    return {errno.ECONNREFUSED: "connection refused (no DNS server on port 53)",
            errno.ENETUNREACH: "network unreachable (no route)",
            errno.EHOSTUNREACH: "host unreachable (an unreachable route, or no neighbour answers)"}.get(
                e.errno, e.strerror or str(e))


def live_findings(findings, path, vrfs, per_vrf, baseline, nsswitch=NSSWITCH):
    """Check 7, live part: per VRF and server, reachable or not (with what the
    doctor itself sees, unplaced, to tell a dead server from a missing route);
    with systemd-resolved in use, also its servers on the VRF's links, asked
    from sockets bound to those links (as resolved asks them)."""
    resolved = resolved_setup(nsswitch)
    for vrf in vrfs:
        if resolved.in_use:
            _resolved_live(findings, resolved, vrf, nsswitch)
        answers = per_vrf.get(vrf.name)
        if isinstance(answers, str):
            findings.append(Finding("resolver", "error", f"DNS through VRF {vrf.name} not tested: {answers}",
                                    "", "", path))
            continue
        for server, outcome in answers.items():
            if outcome == "reachable":
                findings.append(Finding("resolver", "ok", f"nameserver {server} answers through VRF {vrf.name}",
                                        path=path))
                continue
            here = baseline.get(server, "")
            level = "error"
            if is_loopback(server):
                also = ""
                why = (f"it is on the default VRF's loopback, which sockets bound to {vrf.name} do not "
                       "reach: name look-ups in its sessions fail")
            elif here == "reachable":
                also = "; it answers this command outside the VRF"
                why = f"the VRF {vrf.name} has no route to it: name look-ups in its sessions fail"
                leak = route_out(server, vrf.name)
                if leak:
                    why = (f"the VRF {vrf.name} has no route to it, so the kernel looks it up in the main table "
                           f"and the query leaves through {leak}, a link of the default VRF; the answer never "
                           f"reaches the VRF's socket: name look-ups in its sessions fail (see the routes check)")
            else:
                also = "; it does not answer this command outside the VRF either"
                why = "the server is down, filtered or not a DNS server, and sessions cannot resolve names"
            fix = (f"route {server} through {vrf.name} or give the VRF's links a DNS server they reach "
                   f"(resolvectl dns <link> <server>); point resolv.conf at a server reachable through "
                   f"{vrf.name}")
            if resolved.in_use:
                level = "warning"
                why = (f"only programs that read resolv.conf themselves (dig, host, nslookup) are affected: "
                       f"getaddrinfo() goes to systemd-resolved (nss-resolve in {nsswitch})")
                fix = f"in sessions placed in {vrf.name} use getent hosts / resolvectl query, or dig @<server>"
            findings.append(Finding(
                "resolver", level, f"nameserver {server} is not reachable through VRF {vrf.name} "
                f"({outcome.split(': ', 1)[-1]}){also}", why, fix, path))


def route_out(server, vrf, sys_net=SYS_NET):
    """The link a socket bound to `vrf` sends to `server` through, if that link
    is not in the VRF (a lookup fallen through to the main table); else None."""
    try:
        proc = subprocess.run(["ip", "-j", "route", "get", server.split("%", 1)[0], "vrf", vrf],
                              capture_output=True, text=True, timeout=10)
        dev = json.loads(proc.stdout)[0].get("dev", "") if proc.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError, AttributeError):
        return None
    if not dev or dev == vrf or dev == "lo":
        return None
    try:
        if os.path.basename(os.readlink(os.path.join(sys_net, dev, "master"))) == vrf:
            return None
    except OSError:
        pass
    return dev


def _resolved_live(findings, resolved, vrf, nsswitch):
    for link, server, _ in vrf_servers(resolved, vrf.name):
        outcome = probe([server], device=link)[server]
        if outcome == "reachable":
            findings.append(Finding("resolver", "ok", f"systemd-resolved's server {server} on {link} answers "
                                    f"through VRF {vrf.name}", path=nsswitch))
        else:
            findings.append(Finding(
                "resolver", "error", f"systemd-resolved's server {server} on {link} does not answer through VRF "
                f"{vrf.name} ({outcome.split(': ', 1)[-1]})",
                f"resolved asks it for the names routed to {link}: they do not resolve, in sessions placed in "
                f"{vrf.name} and elsewhere", f"check {server} and the routes of VRF {vrf.name}", nsswitch))
