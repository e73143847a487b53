"""Name resolution from inside a VRF.

A socket bound to a VRF routes through the VRF's table: a resolver on the
default VRF's loopback (systemd-resolved's stub 127.0.0.53, a local dnsmasq
or unbound on 127.0.0.1 / ::1) is not reachable from it, so every name look-up
in a placed session fails. static() says so from resolv.conf alone; probe()
is the live test the self-test children run (UDP query for ". NS", 1 s
timeout, 2 tries, every server at once).
"""

import errno
import ipaddress
import os
import select
import socket
import struct
import time

from pam_vrf.doctor import Finding

DNS_PORT = 53
IMPLICIT = "127.0.0.1"      # what the resolver library uses when resolv.conf names none
STUB = "127.0.0.53"


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


def static(findings, path, vrfs):
    """Check 7, static part; returns the nameservers for the live part."""
    servers, problem = nameservers(path)
    if problem:
        findings.append(Finding("resolver", "warning", problem,
                                "name resolution in placed sessions then depends on a local resolver",
                                "list the DNS servers in resolv.conf", path))
    loopback = [s for s in servers if is_loopback(s)]
    for vrf in vrfs:
        for server in loopback:
            what = "systemd-resolved's stub" if server == STUB else "a resolver"
            findings.append(Finding(
                "resolver", "warning", f"nameserver {server}: {what} on the default VRF's loopback is not "
                f"reachable from a socket bound to VRF {vrf.name}",
                f"name look-ups in sessions placed in {vrf.name} fail (or wait for the timeout)",
                f"give the VRF's links their DNS server (resolvectl dns <link> <server>, or DNS= in the "
                f"link's systemd-networkd .network file), or point resolv.conf at a server reachable "
                f"through {vrf.name}", path))
    if not vrfs:
        return servers
    if not loopback:
        findings.append(Finding("resolver", "ok", f"nameservers {', '.join(servers)}: none on loopback",
                                path=path))
    return servers


def query_packet(ident):
    """A DNS query for the root's NS records (". IN NS"), recursion desired."""
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + b"\x00" + struct.pack("!HH", 2, 1)


def is_answer(data, ident):
    return len(data) >= 12 and struct.unpack("!H", data[:2])[0] == ident and data[2] & 0x80


def _address(server):
    info = socket.getaddrinfo(server, DNS_PORT, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
    return info[0][0], info[0][4]


def probe(servers, timeout=1.0, tries=2):
    """{server: "reachable" | "unreachable: why"}, every server queried at once."""
    result, pending = {}, {}
    for server in servers:
        try:
            family, address = _address(server)
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except (OSError, socket.gaierror) as e:
            result[server] = f"unreachable: {e.strerror or e}"
            continue
        try:
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
            errno.EHOSTUNREACH: "host unreachable"}.get(e.errno, e.strerror or str(e))


def live_findings(findings, path, vrfs, per_vrf, baseline):
    """Check 7, live part: per VRF and server, reachable or not (with what the
    doctor itself sees, unplaced, to tell a dead server from a missing route)."""
    for vrf in vrfs:
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
            if is_loopback(server):
                also = ""
                why = (f"it is on the default VRF's loopback, which sockets bound to {vrf.name} do not "
                       "reach: name look-ups in its sessions fail")
            elif here == "reachable":
                also = "; it answers this command outside the VRF"
                why = f"the VRF {vrf.name} has no route to it: name look-ups in its sessions fail"
            else:
                also = "; it does not answer this command outside the VRF either"
                why = "the server is down, filtered or not a DNS server, and sessions cannot resolve names"
            findings.append(Finding(
                "resolver", "error", f"nameserver {server} is not reachable through VRF {vrf.name} "
                f"({outcome.split(': ', 1)[-1]}){also}", why,
                f"route {server} through {vrf.name} or give the VRF's links a DNS server they reach "
                f"(resolvectl dns <link> <server>); point resolv.conf at a server reachable through "
                f"{vrf.name}", path))
