"""Network devices through rtnetlink (pam_vrf.rtnl): lookups and link events,
with the caches the helper keeps right by those events.
"""

import errno
import select

from pam_vrf import rtnl


class DeviceError(Exception):
    pass


class Links:
    def __init__(self):
        self._query = rtnl.connect()
        self._events = rtnl.connect(link_events=True)
        # name -> (ifindex, kind), kept right by the link events we watch anyway:
        # a netlink query per attach was half of an attach's cost.
        self._cache = {}
        self._members = {}      # VRF ifindex -> ifindexes enslaved to it (any link event clears it)

    def close(self):
        self._query.close()
        self._events.close()

    def _behind(self):
        if select.select([self._events.fileno()], [], [], 0)[0]:
            self._cache.clear()     # link events not read yet: the caches may be behind
            self._members.clear()

    def resolve(self, name, plain=False):
        """ifindex of device `name`; it must be a VRF unless `plain`."""
        self._behind()
        if name not in self._cache:
            found = rtnl.link(self._query, name)
            if found is None:
                raise DeviceError(f"no network device '{name}'")
            self._cache[name] = found
        index, kind = self._cache[name]
        if not plain:
            if kind != "vrf":
                raise DeviceError(f"'{name}' is a {kind or 'plain'} device, not a VRF "
                                  "(the rule needs 'plain' to bind to it)")
        return index

    def egress_devices(self, name, plain, ifindex):
        """The devices a packet of a session placed in `name` may leave by: a
        `plain` target itself; a VRF's device (its qdisc path) and every link
        enslaved to it now. A target that is gone: only the ifindex it had,
        which no device has any more (a VRF's former links are default-VRF
        links once it is deleted)."""
        try:
            index = self.resolve(name, plain)
        except DeviceError:
            return frozenset({ifindex})
        if plain:
            return frozenset({index})
        if index not in self._members:
            try:
                links = rtnl.links(self._query)
            except OSError as e:        # placement must see an OSError naming the VRF
                raise OSError(errno.EIO, f"cannot list the links of VRF {name}: {e}") from None
            self._members[index] = frozenset(link for _, link, _, master in links if master == index)
        return frozenset({index}) | self._members[index]

    def fileno(self):
        return self._events.fileno()

    def events(self):
        """Pending link events as (event, name, ifindex), without blocking for long."""
        out = []
        self._members.clear()       # enslaved, released, gone: recomputed when asked
        for msg in self._events.get():
            name = msg.get_attr("IFLA_IFNAME")
            if name and msg["event"] in ("RTM_NEWLINK", "RTM_DELLINK"):
                self._cache.pop(name, None)
                for cached, (index, _) in list(self._cache.items()):
                    if index == msg["index"]:       # renamed or gone under another name
                        del self._cache[cached]
                out.append((msg["event"], name, msg["index"]))
        return out
