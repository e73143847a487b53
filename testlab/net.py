"""Network namespaces (lo up) and veth pairs."""

from testlab.run import kill_quietly, sh


def add_netns(name):
    """A named network namespace with lo up."""
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return name


def remove_netns(name):
    """Kill what runs in it, then delete it (idempotent)."""
    for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
        kill_quietly(pid)
    sh("ip", "netns", "del", name, check=False)


def netns_names():
    return [line.split()[0] for line in sh("ip", "netns", "list", check=False).stdout.splitlines() if line.split()]


def add_veth(netns, name, peer, up=True, peer_netns=None):
    """A veth pair `name` (in `netns`, up) / `peer` (there too, or in `peer_netns`)."""
    argv = ["ip", "-n", netns, "link", "add", name, "type", "veth", "peer", "name", peer]
    sh(*argv, *(["netns", peer_netns] if peer_netns else []))
    if up:
        sh("ip", "-n", netns, "link", "set", name, "up")
