"""Network devices through rtnetlink (pyroute2): lookups and link events.

The only module that imports pyroute2; the login path never does.
"""

import select

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK


class DeviceError(Exception):
    pass


def _kind(msg):
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


class Links:
    def __init__(self):
        self._query = IPRoute()
        self._events = IPRoute()
        self._events.bind(groups=RTMGRP_LINK)
        # name -> (ifindex, kind), kept right by the link events we watch anyway:
        # a netlink query per attach was half of an attach's cost.
        self._cache = {}

    def close(self):
        self._query.close()
        self._events.close()

    def resolve(self, name, plain=False):
        """ifindex of device `name`; it must be a VRF unless `plain`."""
        if select.select([self._events.fileno()], [], [], 0)[0]:
            self._cache.clear()     # link events not read yet: the cache may be behind
        if name not in self._cache:
            found = self._query.link_lookup(ifname=name)
            if not found:
                raise DeviceError(f"no network device '{name}'")
            self._cache[name] = (found[0], _kind(self._query.get_links(found[0])[0]))
        index, kind = self._cache[name]
        if not plain:
            if kind != "vrf":
                raise DeviceError(f"'{name}' is a {kind or 'plain'} device, not a VRF "
                                  "(the rule needs 'plain' to bind to it)")
        return index

    def fileno(self):
        return self._events.fileno()

    def events(self):
        """Pending link events as (event, name, ifindex), without blocking for long."""
        out = []
        for msg in self._events.get():
            name = msg.get_attr("IFLA_IFNAME")
            if name and msg["event"] in ("RTM_NEWLINK", "RTM_DELLINK"):
                self._cache.pop(name, None)
                for cached, (index, _) in list(self._cache.items()):
                    if index == msg["index"]:       # renamed or gone under another name
                        del self._cache[cached]
                out.append((msg["event"], name, msg["index"]))
        return out
