"""Network device names and indexes, stdlib only (device_kind asks pam_vrf.rtnl)."""

IFNAMSIZ = 16  # the kernel's limit, including the terminating NUL


def check_ifname(name):
    """Why `name` cannot be a network device name, or None if it can.

    Mirrors the kernel's dev_valid_name(): it also keeps names that would
    walk out of a cgroup directory ('..', '/') away from the cgroup paths.
    """
    if not name:
        return "empty name"
    if len(name) >= IFNAMSIZ:
        return f"longer than {IFNAMSIZ - 1} characters"
    if name in (".", ".."):
        return "'.' and '..' are not device names"
    for ch in name:
        if ch == "/" or ch == ":" or ch.isspace() or not ch.isprintable():
            return f"character {ch!r} is not allowed in a device name"
    if not name.isascii():
        return "device names are ASCII"
    return None


def ifindex(name):
    """The index of device `name` in the caller's network namespace."""
    import socket
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise LookupError(f"no network device '{name}'") from None


def ifname(index):
    """The name of device `index`, or None when there is none (deleted)."""
    import socket
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None


def device_kind(name):
    """'vrf' for a VRF device, another kind ('veth', 'bridge', '' if none) for
    another device, None when there is no such device in this network namespace.

    Asked over rtnetlink (pam_vrf.rtnl, imported only when asked: the CLI's
    `check` and `doctor` ask this, never the login path).
    """
    from pam_vrf import rtnl
    return rtnl.device_kind(name)


def device_problem(name, plain=False):
    """Why `name` cannot be used as a target here (None if it can)."""
    kind = device_kind(name)
    if kind is None:
        return f"no network device '{name}' in this network namespace"
    if kind != "vrf" and not plain:
        return f"'{name}' is not a VRF device (add 'plain' to bind to an ordinary interface)"
    return None
