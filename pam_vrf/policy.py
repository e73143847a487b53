"""vrf.conf: parse the rules and decide which VRF a login belongs to.

Format (one rule a line, first matching line wins, '#' starts a comment):

    # who          target    options
    alice          mgmt
    @netops        mgmt      services=sshd,login
    @contractors   mgmt      deny=inet6,raw strict
    root           -
    *              default

Options: services=LIST (PAM services the line applies to), deny=ITEMS,
mark=N, priority=N, strict, plain, exec=VRFS (what `pam-vrf exec` may
enter). See vrf.conf(5) in doc/.

Stdlib only. The helper keeps the parsed policy; the PAM entries import
this only when the helper is not running (pam_vrf.offline).
"""

from collections import namedtuple

from pam_vrf import nss
from pam_vrf.netdev import check_ifname
from pam_vrf.sockspec import parse_deny, parse_item

DEFAULT_CONFIG = "/etc/security/vrf.conf"

# Targets with a meaning of their own; everything else names a VRF device.
DEFAULT_VRF = "default"
LEAVE_ALONE = "-"

# The PAM session that starts a user's `systemd --user` (user@UID.service): never
# moved (its cgroup tree is the user's); the helper binds that cgroup itself then.
MANAGER_SERVICE = "systemd-user"

_DEC, _HEX = frozenset("0123456789"), frozenset("0123456789abcdefABCDEF")
_U32_MAX = 0xFFFFFFFF
_FLAGS = ("strict", "plain")
# The longest user, group or service name the helper accepts in a request
# (helper.requests.MAX_NAME): a longer one in a rule could never match.
MAX_NAME = 256
_VALUED = ("services", "deny", "mark", "priority", "exec")


class ConfigError(Exception):
    """A vrf.conf problem, always tied to FILE:LINE (line 0: the file itself)."""

    def __init__(self, filename, line, message):
        super().__init__(f"{filename}:{line}: {message}")
        self.filename = filename
        self.line = line
        self.message = message


# typing.NamedTuple would cost ~6 ms of imports on every login; namedtuple does not.
_RuleFields = namedtuple("_RuleFields", [
    "who",          # user name, "@group" or "*"
    "target",       # VRF/device name, DEFAULT_VRF or LEAVE_ALONE
    "services",     # frozenset; empty: every PAM service
    "deny",         # tuple of sockspec.DenyItem, in file order
    "mark",         # int or None
    "priority",     # int or None
    "strict",       # a placement failure refuses the session
    "plain",        # target (and exec= names) are ordinary interfaces, not VRFs
    "exec",         # frozenset: VRFs `pam-vrf exec` may enter without sudo
    "filename",
    "line",
])


class Program(namedtuple("Program", ["deny", "mark", "priority", "plain"])):
    """What a rule asks of the programs on its cgroup, the one form of it:
    deny (tuple of sockspec.DenyItem, file order), mark and priority (int or
    None), plain (the target is an ordinary interface: no VRF). Frozen and
    hashable; the helper's state file keeps fields() (deny as texts)."""

    __slots__ = ()

    def fields(self):
        return {"deny": [item.text for item in self.deny], "mark": self.mark, "priority": self.priority,
                "plain": self.plain}

    @classmethod
    def of_fields(cls, fields):
        """From fields() (the state file); ValueError, KeyError or TypeError when damaged."""
        plain = fields["plain"]
        if type(plain) is not bool or any(v is not None and type(v) is not int
                                          for v in (fields["mark"], fields["priority"])):
            raise ValueError(f"bad rule fields {fields!r}")
        return cls(tuple(parse_item(text) for text in fields["deny"]), fields["mark"], fields["priority"], plain)

    def text(self):
        words = [f"deny={','.join(item.text for item in self.deny)}"] if self.deny else []
        words += [f"{k}={getattr(self, k)}" for k in ("mark", "priority") if getattr(self, k) is not None]
        return " ".join(words) or "bind only"


# Root's `pam-vrf exec`: bound to the VRF, nothing denied.
BIND_ONLY = Program((), None, None, False)


class Rule(_RuleFields):
    __slots__ = ()

    @property
    def program(self):
        return Program(self.deny, self.mark, self.priority, self.plain)

    @property
    def where(self):
        return f"{self.filename}:{self.line}"

    @property
    def places(self):
        """True when the rule puts the session into a VRF cgroup with a program."""
        return self.target not in (DEFAULT_VRF, LEAVE_ALONE)

    def options_text(self):
        """The options as they would be written in vrf.conf (normalised)."""
        words = []
        if self.services:
            words.append("services=" + ",".join(sorted(self.services)))
        if self.deny:
            words.append("deny=" + ",".join(item.text for item in self.deny))
        if self.mark is not None:
            words.append(f"mark={self.mark}")
        if self.priority is not None:
            words.append(f"priority={self.priority}")
        if self.exec:
            words.append("exec=" + ",".join(sorted(self.exec)))
        words += [flag for flag in _FLAGS if getattr(self, flag)]
        return " ".join(words)


def load(path=DEFAULT_CONFIG):
    """Read and parse a vrf.conf; every failure is a ConfigError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(path, 0, f"cannot read: {e.strerror or e}") from None
    return parse(data, path)


def parse(data, filename="<string>"):
    """Parse vrf.conf text (str or bytes) into a tuple of Rules."""
    if isinstance(data, bytes):
        data = _decode(data, filename)
    if data.startswith("\ufeff"):     # a byte-order mark some editors write
        data = data[1:]
    rules = []
    for number, raw in enumerate(data.split("\n"), start=1):
        rule = _parse_line(raw, filename, number)
        if rule is not None:
            rules.append(rule)
    rules = Rules(rules)
    rules.group_count = len({r.who for r in rules if r.who.startswith("@")})
    return rules


def _decode(data, filename):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(filename, line, "not valid UTF-8") from None


def _parse_line(raw, filename, number):
    def fail(message):
        raise ConfigError(filename, number, message)

    if "\x00" in raw:
        fail("NUL character")
    text = raw.split("#", 1)[0]
    words = text.split()
    if not words:
        return None
    if len(words) < 2:
        fail(f"'{words[0]}' has no target: expected 'WHO TARGET [OPTIONS]'")

    who, target, options = words[0], words[1], words[2:]
    _check_who(who, fail)
    if target not in (DEFAULT_VRF, LEAVE_ALONE):
        problem = check_ifname(target)
        if problem:
            fail(f"bad target '{target}': {problem} (or use 'default' or '-')")

    seen = {}
    for word in options:
        key, eq, value = word.partition("=")
        if key in _FLAGS and not eq:
            value = True
        elif key in _VALUED and eq:
            if not value:
                fail(f"option '{key}=' has an empty value")
        elif key in _FLAGS or key in _VALUED:
            fail(f"option '{key}' " + ("takes no value" if eq else "needs a value: " + key + "=..."))
        else:
            fail(f"unknown option '{word}' (known: {', '.join(_VALUED + _FLAGS)})")
        if key in seen:
            fail(f"option '{key}' given twice")
        seen[key] = value

    services = frozenset()
    if "services" in seen:
        services = frozenset(s for s in seen["services"].split(","))
        if "" in services:
            fail("empty name in services= list")
        if any(len(name) > MAX_NAME for name in services):
            fail(f"service name longer than {MAX_NAME} characters in services= list")
    deny = ()
    if "deny" in seen:
        try:
            deny = parse_deny(seen["deny"])
        except ValueError as e:
            fail(f"bad deny= list: {e}")
    exec_vrfs = frozenset()
    if "exec" in seen:
        exec_vrfs = frozenset(seen["exec"].split(","))
        for name in exec_vrfs:
            problem = check_ifname(name) if name != DEFAULT_VRF else None
            if problem:
                fail(f"bad VRF '{name}' in exec= list: {problem}")
    mark = _u32(seen, "mark", fail)
    priority = _u32(seen, "priority", fail)

    # plain also describes the exec= names, so it may stand with them alone.
    vrf_only = [k for k in ("deny", "mark", "priority", "plain") if k in seen
                and not (k == "plain" and "exec" in seen)]
    if target == LEAVE_ALONE and (vrf_only or "strict" in seen):
        fail(f"target '-' leaves the session alone: option '{(vrf_only or ['strict'])[0]}' makes no sense")
    if target == DEFAULT_VRF and vrf_only:
        fail(f"option '{vrf_only[0]}' needs a VRF target, not 'default' (the default VRF carries no program)")

    return Rule(who, target, services, deny, mark, priority,
                "strict" in seen, "plain" in seen, exec_vrfs, filename, number)


def _check_who(who, fail):
    if who == "*":
        return
    name = who[1:] if who.startswith("@") else who
    if not name:
        fail("'@' needs a group name")
    if name.startswith("@") or "*" in name or ":" in name or "," in name:
        fail(f"bad user or group '{who}': expected USER, @GROUP or *")
    if len(name) > MAX_NAME:
        fail(f"user or group name longer than {MAX_NAME} characters")


def _u32(seen, key, fail):
    if key not in seen:
        return None
    value = seen[key]
    hex_value = value.startswith("0x") and len(value) > 2
    if not (set(value[2:]) <= _HEX if hex_value else value and set(value) <= _DEC):
        fail(f"{key}= needs a number, got '{value}'")
    # int(value, 0) refuses leading zeros ('010') and int() refuses more than
    # sys.get_int_max_str_digits() digits: both must be a ConfigError, not a ValueError.
    digits, base = (value[2:], 16) if value.startswith("0x") else (value, 10)
    digits = digits.lstrip("0") or "0"
    if len(digits) > 10 or int(digits, base) > _U32_MAX:
        fail(f"{key}={value} is larger than 32 bits")
    return int(digits, base)


class Account:
    """Who is logging in, as NSS knows them: `user` (NSS's spelling of the
    name), `gids` (frozenset), `error` (the NSS failure, as text, that kept
    us from knowing the account, or None), `given` (the name as the login
    gave it) and `groups_error` (the NSS failure that kept us from knowing
    its groups; the account itself is known).

    The groups are asked of NSS (getgrouplist: a scan of /etc/group, a round
    trip with LDAP) only when a `@group` rule is reached: a login decided by
    its name, or by `*` above every group rule, never asks.
    """

    __slots__ = ("user", "error", "given", "_gids", "_groups_error", "_entry")

    def __init__(self, user, gids=None, error=None, given=None, groups_error=None, entry=None):
        self.user, self.error, self.given = user, error, given
        self._gids, self._groups_error, self._entry = gids, groups_error, entry

    @property
    def uid(self):
        """The account's uid, None when NSS does not know it (or failed)."""
        return self._entry.uid if self._entry is not None else None

    def _groups(self):
        if self._gids is None:
            if self._entry is None:
                self._gids = frozenset()
            else:
                try:
                    self._gids = nss.gids(self._entry)
                except nss.NssError as e:
                    self._gids, self._groups_error = frozenset([self._entry.gid]), str(e)

    @property
    def gids(self):
        self._groups()
        return self._gids

    @property
    def groups_error(self):
        self._groups()
        return self._groups_error

    def _fields(self):
        return self.user, self.gids, self.error, self.given, self.groups_error

    def __eq__(self, other):
        return isinstance(other, Account) and self._fields() == other._fields()

    __hash__ = None

    def __repr__(self):
        return "Account(%r, %r, error=%r, given=%r, groups_error=%r)" % self._fields()


def account(user, uid=None):
    """Look up a user's name, primary and supplementary groups through NSS.

    A user-name rule matches the account, not a spelling: with SSSD/AD or
    LDAP answering case-insensitively (or for 'alice@domain'), 'ALICE' is
    the account NSS calls 'alice', and so is a rule that names it that way.
    NSS's name counts only if it leads back to the same uid: SSSD reports
    an AD 'ADMIN' as 'admin', and with files first that name is a local
    account's, whose rules (and groups) are not the AD account's.
    An unknown user gets no groups: only name and '*' rules can match them.
    A failing name service is remembered: `@group` rules, and name rules
    that could be another spelling of the same account, then cannot be
    decided (see Undecidable).
    With `uid` (pam-vrf exec: the name getpwuid gave the requester), a name
    that is another account's matches nothing and leaves group rules
    undecidable: only a `*` rule above them can apply.
    """
    try:
        entry = nss.user(user)
        if uid is not None and (entry is None or entry.uid != uid):
            return Account("", frozenset(), f"uid {uid} is known as {user!r}, which names "
                           f"{'no account' if entry is None else f'uid {entry.uid}'}")
        if entry is None:
            return Account(user, frozenset())
        if entry.name != user:
            back = nss.user(entry.name)
            if back is None or back.uid != entry.uid:
                return Account(user, entry=entry._replace(name=user))
    except nss.NssError as e:
        return Account(user, frozenset(), str(e))
    return Account(entry.name, given=user, entry=entry)


def _names(who):
    """The names a user rule may spell the account with."""
    return (who.user,) if who.given in (None, who.user) else (who.user, who.given)


def _base(name):
    """A name without letter case and the domain part of 'user@domain' or 'DOMAIN\\user'."""
    return name.split("@", 1)[0].rsplit("\\", 1)[-1].casefold()


def _another_spelling(rule_who, who):
    """A name rule that a name service which failed might have matched: the
    same name in other letter case or with a domain (what SSSD, Winbind and
    case-insensitive LDAP accept). Aliases are not foreseen: see vrf.conf(5)."""
    return bool(who.error) and rule_who[0] != "@" and rule_who != "*" and _base(rule_who) == _base(who.user)


class Undecidable(Exception):
    """A `@group` rule, or a name rule that could be another spelling of the
    account (see _another_spelling), could not be checked: a name service failed.

    `strict` tells whether that rule or any later one that could apply is
    strict: the caller must then refuse rather than guess.
    """

    def __init__(self, rule, strict, reason):
        super().__init__(f"cannot decide rule {rule.where} ({rule.who}): {reason}")
        self.rule, self.strict, self.reason = rule, strict, reason


def unplaceable(who, found, why=None, service=None, left="left unplaced"):
    """The verdict for a session its rule cannot be applied to, and the line to
    log: the helper's verdict kind and text (pam_vrf.protocol.proceeds maps it
    to what PAM does). One place for both the helper and the PAM entries'
    decider without it (pam_vrf.offline).

    who: "user NAME (service S)". found: the Rule that applies (None: no
    rule), or the Undecidable decide() raised instead. why: why it cannot be
    placed (the helper absent, the placement failed), None for nothing to add.
    service: the PAM service; the user's systemd manager's own session
    (MANAGER_SERVICE) is left alone: it is placed only by being bound.
    Returns (kind, line): 'alone' (no rule, '-', the manager: a debug line),
    'refused' (the rule is strict, or a name service failed and a strict rule
    may apply), 'unplaced' (otherwise).
    """
    because = f"{why}, and " if why else ""
    if service == MANAGER_SERVICE:
        return "alone", f"{who} left alone (the systemd user manager: bound by the helper only)"
    if isinstance(found, Undecidable):
        if found.strict:
            return "refused", f"refusing session of {who}: {because}{found} (a strict rule may apply)"
        return "unplaced", f"{who} {left}: {because}{found}"
    if found is None or found.target == LEAVE_ALONE:
        return "alone", f"{who} left alone ({found.where if found else 'no matching rule'})" + (
            f"; {why}" if why else "")
    where = f"rule {found.where}, VRF {found.target}"
    if found.strict:
        return "refused", f"refusing session of {who}: {why} (strict {where})"
    return "unplaced", f"{who} {left}: {why} ({where})"


class GroupNames:
    """Answers "is the account in @group NAME?" through NSS, each name once.

    With few distinct groups in the rules, one look-up per name. With many,
    looking names up one by one is too slow (each is a scan of /etc/group
    with the files backend, a round trip with LDAP; names that do not exist
    are the worst case), so the account's own gids are turned into names
    instead: one enumeration of the group database, plus a look-up by gid
    for gids it does not show (SSSD/LDAP without enumerate, or a source that
    failed to enumerate: the look-up by gid then reports its failure).
    Raises nss.NssError when a name service fails (nss.gids tells a failing
    source, which getgrouplist would skip, in both ways).
    """

    ENUMERATE_ABOVE = 32

    def __init__(self, account, distinct_names):
        if account.error or account.groups_error:
            raise nss.NssError(account.error or account.groups_error)
        self.gids = account.gids
        self._member = {}
        self._names = None
        if distinct_names > self.ENUMERATE_ABOVE:
            names, by_gid = set(), nss.groups_by_gid()
            for gid in self.gids:
                if gid in by_gid:
                    names.update(by_gid[gid])
                else:
                    entry = nss.group_by_gid(gid)
                    if entry is not None:
                        names.add(entry.name)
            self._names = names

    def member(self, name):
        if self._names is not None:
            return name in self._names
        if name not in self._member:
            entry = nss.group(name)
            self._member[name] = entry is not None and entry.gid in self.gids
        return self._member[name]


class Rules(tuple):
    """The parsed policy: a tuple of Rules, plus what decide() wants to know once."""

    group_count = None          # distinct '@group' names
    _by_service = None
    # PAM services are few and chosen by root's PAM stacks (and ANY_SERVICE):
    # past this many, an index is built for the call and not kept.
    MAX_INDEXES = 64

    def index_for(self, service):
        """({who: first position}, first @group position or None) over the
        rules that apply to `service`: built on first use for each service
        (the helper keeps the policy), so a decision never walks rules that
        services= excludes (bench P4: 3 333 of them before the match)."""
        if self._by_service is None:
            self._by_service = {}
        found = self._by_service.get(service)
        if found is None:
            first, first_group = {}, None
            for position, rule in enumerate(self):
                if applies(rule, service):
                    first.setdefault(rule.who, position)
                    if first_group is None and rule.who[0] == "@":
                        first_group = position
            found = (first, first_group)
            if len(self._by_service) < self.MAX_INDEXES:
                self._by_service[service] = found
        return found


# Above this many rules decide() looks up the account's candidates in an index
# instead of walking every line (10 000 lines: ~3 ms walked, ~0.05 ms indexed).
INDEX_ABOVE = 256
_WALK = object()


ANY_SERVICE = object()      # decide() for `pam-vrf exec`: services= lists do not filter


def decide(rules, who, service=None):
    """The first rule that matches the account and PAM service, or None.

    `who` is an Account (see account()) or a user name. None means no line
    matched: the session is left alone, as with target '-'. With
    service=ANY_SERVICE, services= lists are ignored (exec= permissions).
    Raises Undecidable when a `@group` rule cannot be checked (NSS failure).
    """
    if isinstance(who, str):
        who = account(who)
    if isinstance(rules, Rules) and len(rules) > INDEX_ABOVE:
        found = _decide_indexed(rules, who, service)
        if found is not _WALK:
            return found
    groups, names = None, _names(who)
    for index, rule in enumerate(rules):
        if not applies(rule, service):
            continue
        if rule.who == "*" or rule.who in names:
            return rule
        if _another_spelling(rule.who, who):
            raise Undecidable(rule, _strict_after(rules, index, who, names, service), who.error)
        if rule.who.startswith("@"):
            try:
                if groups is None:
                    count = getattr(rules, "group_count", None)
                    if count is None:
                        count = len({r.who for r in rules if r.who.startswith("@")})
                    groups = GroupNames(who, count)
                if groups.member(rule.who[1:]):
                    return rule
            except nss.NssError as e:
                raise Undecidable(rule, _strict_after(rules, index, who, names, service), str(e)) from None
    return None


def _strict_after(rules, index, who, names, service):
    """Is rules[index] or a later rule that could apply to the account strict?"""
    return any(r.strict for r in rules[index:] if applies(r, service) and (
        r.who == "*" or r.who in names or r.who.startswith("@") or _another_spelling(r.who, who)))


def _decide_indexed(rules, who, service):
    """decide() through the index: the same first match, or _WALK where only the
    walk gives the same answer (names looked up one by one, a failing NSS).
    The account's groups are asked for only when a group rule comes before
    the first name or `*` rule that matches."""
    if who.error:
        return _WALK                # the walk raises Undecidable at the right rule
    first, first_group = rules.index_for(service)
    found = [first[key] for key in (*_names(who), "*") if key in first]
    best = min(found) if found else None
    if first_group is not None and (best is None or first_group < best):
        try:
            groups = GroupNames(who, rules.group_count)
        except nss.NssError:
            return _WALK            # a group look-up failed: as above
        if groups._names is None:
            return _WALK            # few group names: the walk asks NSS for each, in order
        found += [first["@" + name] for name in groups._names if "@" + name in first]
        best = min(found) if found else None
    return rules[best] if best is not None else None


def applies(rule, service):
    """Does the rule's services= take this PAM service (ANY_SERVICE: every rule)?"""
    return not rule.services or service is ANY_SERVICE or service in rule.services
