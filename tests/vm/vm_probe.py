#!/usr/bin/python3
"""Probe run by tests/vm inside login sessions (as the logged-in user): what a
process of the session sees. Prints one JSON object per probe:

    pid, ppid, uid, cgroup           this process (a child of the login shell)
    sockets: {tcp4, udp4, tcp6, udp6[, raw4, raw6]}
        {"dev": NAME, "ifindex": N}  the device the new socket is bound to
                                     ("" / 0: unbound), read with
                                     SO_BINDTODEVICE and SO_BINDTOIFINDEX
        {"errno": E}                 socket() (or the read-back) failed
    peers: {tcp4, udp4, tcp6, udp6}  with --traffic: who answers 10.99.0.2 /
                                     fd00:99::2 port 7000 ("mgmt-peer",
                                     "prod-peer", or "errno:E" / "timeout")

    escape: {...}                    with --escape: what an unprivileged user's
                                     attempts to leave the VRF gave ("ok" or
                                     "errno:E"): unbind / rebind a socket,
                                     move itself to another cgroup

Options: --raw (also raw sockets), --traffic, --escape, --wait (after the
first probe, probe again for every line read from stdin: an existing
session, later).
Not a test module (tests/vm/vm_*.py are helpers); stdlib only.
"""

import errno
import json
import os
import socket
import sys

SO_BINDTOIFINDEX = 62
PEER_V4, PEER_V6, PORT = "10.99.0.2", "fd00:99::2", 7000
KINDS = [("tcp4", socket.AF_INET, socket.SOCK_STREAM, 0),
         ("udp4", socket.AF_INET, socket.SOCK_DGRAM, 0),
         ("tcp6", socket.AF_INET6, socket.SOCK_STREAM, 0),
         ("udp6", socket.AF_INET6, socket.SOCK_DGRAM, 0)]
RAW = [("raw4", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
       ("raw6", socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)]


def bound(family, kind, proto):
    try:
        s = socket.socket(family, kind, proto)
    except OSError as e:
        return {"errno": e.errno}
    try:
        index = s.getsockopt(socket.SOL_SOCKET, SO_BINDTOIFINDEX)
        try:
            dev = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0").decode()
        except OSError as e:        # bound to an index no device has (ENXIO)
            dev = f"errno:{e.errno}"
        return {"dev": dev, "ifindex": index}
    except OSError as e:
        return {"errno": e.errno}
    finally:
        s.close()


def ask(name, family, kind):
    address = PEER_V4 if family == socket.AF_INET else PEER_V6
    try:
        s = socket.socket(family, kind)
    except OSError as e:
        return f"errno:{e.errno}"
    try:
        s.settimeout(5)
        s.connect((address, PORT))
        if kind == socket.SOCK_DGRAM:
            s.send(b"who?")
        return s.recv(100).decode()
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return f"errno:{e.errno} ({errno.errorcode.get(e.errno, '?')})"
    finally:
        s.close()


def attempt(action):
    try:
        action()
        return "ok"
    except OSError as e:
        return f"errno:{e.errno}"


def escape():
    """Try to leave the VRF the way an unprivileged user could."""
    out = {}
    for name, dev in (("unbind", b""), ("rebind", b"veth-prod")):
        s = socket.socket()
        out[name] = attempt(lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev))
        s.close()
    uid = os.getuid()
    user_slice = f"/sys/fs/cgroup/user.slice/user-{uid}.slice"
    with open("/proc/self/cgroup") as f:
        own = [line.strip()[3:] for line in f if line.startswith("0::")][0]
    scope = "/sys/fs/cgroup" + own.split("/vrf", 1)[0]
    # The session scope itself (above the VRF cgroup), and the user manager's
    # own cgroup (delegated to the user: the user may write its cgroup.procs).
    for name, target in (("move to session scope", scope),
                         ("move to user manager", f"{user_slice}/user@{uid}.service/init.scope")):
        def move():
            with open(f"{target}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
        out[name] = attempt(move)
    return out


def probe(raw, traffic, tries_escape=False):
    with open("/proc/self/cgroup") as f:
        cg = [line.strip()[3:] for line in f if line.startswith("0::")][0]
    out = {"pid": os.getpid(), "ppid": os.getppid(), "uid": os.getuid(), "cgroup": cg,
           "sockets": {name: bound(fam, kind, proto) for name, fam, kind, proto in KINDS + (RAW if raw else [])}}
    if traffic:
        out["peers"] = {name: ask(name, fam, kind) for name, fam, kind, _ in KINDS}
    if tries_escape:
        out["escape"] = escape()
    print(json.dumps(out), flush=True)


def main():
    raw, traffic, tries_escape = "--raw" in sys.argv, "--traffic" in sys.argv, "--escape" in sys.argv
    probe(raw, traffic, tries_escape)
    if "--wait" in sys.argv:
        for _ in sys.stdin:
            probe(raw, traffic, tries_escape)


if __name__ == "__main__":
    main()
