"""rtnetlink through pyroute2: the one module that imports it.

pyroute2 is heavy (~140 ms to import): the helper (helper.links), the CLI's
`check` (netdev.device_kind) and `doctor` (doctor.config) import this, the
login path never does. Importing it raises ImportError without pyroute2.
Devices are asked over rtnetlink, as `ip -d link` does: sysfs shows the
network namespace it was mounted in (wrong under `nsenter --net`), and the
VRF driver sets no DEVTYPE in uevent.
"""

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK


class RtnlError(OSError):
    """rtnetlink failed (pyroute2's NetlinkError is no OSError: callers that
    handle OSError must see one)."""


def connect(link_events=False):
    """An rtnetlink socket (IPRoute): for queries, or bound to link events."""
    ipr = IPRoute()
    if link_events:
        ipr.bind(groups=RTMGRP_LINK)
    return ipr


def kind(msg):
    """A link message's IFLA_INFO_KIND ('vrf', 'veth', ...) or None."""
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def link(ipr, name):
    """(ifindex, kind or None) of device `name`, None when there is none."""
    try:
        found = ipr.link_lookup(ifname=name)
        return (found[0], kind(ipr.get_links(found[0])[0])) if found else None
    except OSError:
        raise
    except Exception as e:
        raise RtnlError(f"rtnetlink: {e}") from None


def links(ipr):
    """Every device: [(name, ifindex, kind or None, master ifindex or None)]."""
    try:
        return [(msg.get_attr("IFLA_IFNAME"), msg["index"], kind(msg), msg.get_attr("IFLA_MASTER"))
                for msg in ipr.get_links()]
    except OSError:
        raise
    except Exception as e:
        raise RtnlError(f"rtnetlink: {e}") from None


def device_kind(name):
    """kind(link(name)) with a socket of its own ('' for a device without a kind)."""
    with IPRoute() as ipr:
        found = link(ipr, name)
    return None if found is None else (found[1] or "")
