"""Does each VRF's routing table end in a default route?

A lookup that finds nothing in the VRF's table does not stop there: the
kernel goes on with the next rules (main, default), and a socket bound to
the VRF then sends through a link of the default VRF. Proven in the test VM
(tests/vm/test_vm_names.py): with table 10 holding only its connected
route, a DNS query from a socket bound to mgmt to a server behind a
default-VRF link left through that link (the server logged it; its answer
never reached the socket). The kernel's VRF documentation
(Documentation/networking/vrf.rst) has the fix: an unreachable default with
the highest metric, per family, in every VRF table.

Per VRF of vrf.conf and address family: `ip -j route show vrf NAME default`
(iproute2, a dependency); any default route (unicast, unreachable,
prohibit, blackhole) is enough.
"""

import json
import subprocess

from pam_vrf.doctor import Finding

LAST_METRIC = 4278198272    # what vrf.rst uses: after every other default


def defaults(vrf, family):
    """The default routes of `vrf`'s table for family "-4" / "-6" (a list), or an error text."""
    try:
        proc = subprocess.run(["ip", "-j", family, "route", "show", "vrf", vrf, "default"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"ip route: {e}"
    if proc.returncode != 0:
        return (proc.stderr or proc.stdout).strip() or f"ip route exited {proc.returncode}"
    try:
        return json.loads(proc.stdout or "[]")
    except ValueError:
        return f"ip route: unreadable output {proc.stdout[:80]!r}"


def check(findings, vrfs):
    for vrf in vrfs:
        if vrf.plain:
            continue            # an ordinary interface: no table of its own
        missing, unread = [], False
        for family, name in (("-4", "IPv4"), ("-6", "IPv6")):
            routes = defaults(vrf.name, family)
            if isinstance(routes, str):
                unread = True
                findings.append(Finding("routes", "warning", f"VRF {vrf.name}: {name} routes not read: {routes}"))
            elif not routes:
                missing.append((family, name))
        if unread and not missing:
            continue
        if not missing:
            findings.append(Finding("routes", "ok", f"VRF {vrf.name}: its table ends in a default route "
                                    "(IPv4 and IPv6)"))
            continue
        names = " and ".join(name for _, name in missing)
        fix = "; ".join(f"ip {family} route add unreachable default metric {LAST_METRIC} vrf {vrf.name}"
                        for family, _ in missing)
        # An error: confinement is the promise, and this lets any placed
        # session send (UDP datagrams, TCP SYNs) into default-VRF networks.
        findings.append(Finding(
            "routes", "error", f"VRF {vrf.name}: its table has no {names} default route",
            f"an address it has no route for is looked up in the main table next: sockets of sessions placed in "
            f"{vrf.name} then send through links of the default VRF (answers do not come back, but what is "
            f"sent leaves: a placed session can send into the default VRF's networks)",
            f"{fix} (persistent: a [Route] with Type=unreachable, Destination=0.0.0.0/0 or ::/0, Table= the "
            f"VRF's table and Metric={LAST_METRIC} in its systemd-networkd .network file)"))
