"""Unit tests for pam_vrf.policy: vrf.conf parsing, errors and matching.

The matching tests create real throwaway users and groups (useradd/groupadd,
names starting with 'pvt' and the test process id) and remove them again.
Run as root with Debian's /usr/bin/python3.
"""

import grp
import os
import pwd
import secrets
import socket
import subprocess

import pytest

from pam_vrf import nss, policy
from pam_vrf.policy import ConfigError, Rule
from pam_vrf.sockspec import DenyItem

AF_INET, AF_INET6 = int(socket.AF_INET), int(socket.AF_INET6)
STREAM, DGRAM, RAW, SEQPACKET = (int(socket.SOCK_STREAM), int(socket.SOCK_DGRAM),
                                 int(socket.SOCK_RAW), int(socket.SOCK_SEQPACKET))


def one(text, filename="vrf.conf"):
    rules = policy.parse(text, filename)
    assert len(rules) == 1, rules
    return rules[0]


def error(text, filename="vrf.conf"):
    with pytest.raises(ConfigError) as info:
        policy.parse(text, filename)
    e = info.value
    assert str(e) == f"{e.filename}:{e.line}: {e.message}"
    assert e.filename == filename
    return e


# The Rule fields these tests know. Fields added later (options these tests do
# not use) must stay empty/None/False when their option is not given.
KNOWN_FIELDS = ("who", "target", "services", "deny", "mark", "priority", "strict", "plain",
                "filename", "line")


def fields(rule):
    """The known fields of `rule` as a dict; other fields must be empty."""
    assert type(rule) is Rule
    extra = {f: getattr(rule, f) for f in rule._fields if f not in KNOWN_FIELDS}
    assert not any(extra.values()), f"options not given set {extra}"
    return {f: getattr(rule, f) for f in KNOWN_FIELDS}


def expect(who, target, services=frozenset(), deny=(), mark=None, priority=None,
           strict=False, plain=False, filename="vrf.conf", line=1):
    return dict(who=who, target=target, services=services, deny=deny, mark=mark,
                priority=priority, strict=strict, plain=plain, filename=filename, line=line)


def same_rule(a, b):
    """Rules equal apart from where they were read."""
    return a._replace(filename="", line=0) == b._replace(filename="", line=0)


# --------------------------------------------------------------------------
# parse: the happy paths
# --------------------------------------------------------------------------

def test_design_example_parses_to_the_documented_rules():
    text = (
        "# who          target    options\n"
        "alice          mgmt\n"
        "@netops        mgmt      services=sshd,login\n"
        "@contractors   mgmt      deny=inet6,raw strict\n"
        "root           -\n"
        "*              default\n"
    )
    rules = policy.parse(text, "/etc/security/vrf.conf")
    assert all(type(r) is Rule for r in rules)
    assert [(r.who, r.target, r.line) for r in rules] == [
        ("alice", "mgmt", 2), ("@netops", "mgmt", 3), ("@contractors", "mgmt", 4),
        ("root", "-", 5), ("*", "default", 6)]
    alice, netops, contractors, root, rest = rules
    assert fields(alice) == expect("alice", "mgmt", filename="/etc/security/vrf.conf", line=2)
    assert netops.services == frozenset({"sshd", "login"})
    assert contractors.deny == (DenyItem(AF_INET6, None, None, "inet6"),
                                DenyItem(None, RAW, None, "raw"))
    assert contractors.strict is True and contractors.plain is False
    assert root.places is False and rest.places is False and alice.places is True
    assert contractors.where == "/etc/security/vrf.conf:4"


def test_parse_returns_tuple_and_empty_inputs_give_no_rules():
    for text in ("", "\n", "   \n\t\n", "# only a comment\n   # indented comment", b"", b"\n\n"):
        assert policy.parse(text) == ()
    assert isinstance(policy.parse("a b"), tuple)


def test_comments_blank_lines_and_line_numbers():
    text = ("\n"                                   # 1 blank
            "# whole-line comment\n"               # 2
            "   # indented comment\n"              # 3
            "\t \n"                                # 4 whitespace only
            "alice mgmt # trailing comment\n"      # 5
            "bob mgmt#glued comment strict\n"      # 6: 'strict' is in the comment
            "carol\tdefault\t#\ttabs\n"            # 7
            "dave mgmt strict # deny=bogus mark=x\n"  # 8: bad options are commented out
            "#erin mgmt\n")                        # 9
    rules = policy.parse(text, "f")
    assert [(r.who, r.target, r.line) for r in rules] == [
        ("alice", "mgmt", 5), ("bob", "mgmt", 6), ("carol", "default", 7), ("dave", "mgmt", 8)]
    assert rules[1].strict is False
    assert rules[3].strict is True and rules[3].deny == () and rules[3].mark is None


def test_whitespace_variants_crlf_and_no_final_newline():
    rules = policy.parse("alice mgmt\r\n  bob\t\t-  \r\n\x0bcarol \x0c default")
    assert [(r.who, r.target, r.line) for r in rules] == [
        ("alice", "mgmt", 1), ("bob", "-", 2), ("carol", "default", 3)]


def test_targets_name_default_and_leave_alone():
    assert one("a mgmt").target == "mgmt"
    assert one("a default").target == policy.DEFAULT_VRF == "default"
    assert one("a -").target == policy.LEAVE_ALONE == "-"
    assert one("a " + "v" * 15).target == "v" * 15          # IFNAMSIZ - 1
    assert one("a vrf-blue.10_x").target == "vrf-blue.10_x"
    assert one("a mgmt").places and not one("a default").places and not one("a -").places


def test_who_forms():
    assert one("alice x").who == "alice"
    assert one("@netops x").who == "@netops"
    assert one("* x").who == "*"
    assert one("svc-backup.2$ x").who == "svc-backup.2$"


def test_services_option():
    r = one("a mgmt services=sshd")
    assert r.services == frozenset({"sshd"})
    r = one("a mgmt services=sshd,login,su,sshd")   # duplicates collapse
    assert r.services == frozenset({"sshd", "login", "su"})
    assert one("a mgmt").services == frozenset()
    assert one("a - services=cron").services == frozenset({"cron"})
    assert one("a default services=cron").services == frozenset({"cron"})


@pytest.mark.parametrize("word, item", [
    ("inet", (AF_INET, None, None)),
    ("inet6", (AF_INET6, None, None)),
    ("stream", (None, STREAM, None)),
    ("dgram", (None, DGRAM, None)),
    ("raw", (None, RAW, None)),
    ("seqpacket", (None, SEQPACKET, None)),
    ("inet:stream", (AF_INET, STREAM, None)),
    ("inet6:dgram:udp", (AF_INET6, DGRAM, 17)),
    ("inet:raw:icmp", (AF_INET, RAW, 1)),
    ("inet6:raw:icmpv6", (AF_INET6, RAW, 58)),
    ("inet:stream:mptcp", (AF_INET, STREAM, 262)),
    ("inet:seqpacket:sctp", (AF_INET, SEQPACKET, 132)),
    ("inet6:dgram:udplite", (AF_INET6, DGRAM, 136)),
    ("inet:raw:ip", (AF_INET, RAW, 0)),
    ("inet6:raw:ipv6", (AF_INET6, RAW, 41)),
    ("*:raw", (None, RAW, None)),
    ("inet:*", (AF_INET, None, None)),
    ("*:*:tcp", (None, None, 6)),
    ("inet6:*:udp", (AF_INET6, None, 17)),
    ("*:dgram:*", (None, DGRAM, None)),
    ("2:1:6", (AF_INET, STREAM, 6)),
    ("10:2", (AF_INET6, DGRAM, None)),
    ("*:15", (None, 15, None)),
    ("*:*:65535", (None, None, 65535)),
    ("*:*:0", (None, None, 0)),
    ("inet:0003:017", (AF_INET, RAW, 17)),                   # leading zeros are decimal
    ("*:*:" + "0" * 5000 + "6", (None, None, 6)),             # longer than int()'s digit limit
])
def test_deny_items(word, item):
    r = one(f"a mgmt deny={word}")
    assert r.deny == (DenyItem(*item, word),)


def test_deny_list_keeps_file_order_and_text():
    r = one("a mgmt deny=raw,inet6,inet:dgram:udp,*:stream:6")
    assert [d.text for d in r.deny] == ["raw", "inet6", "inet:dgram:udp", "*:stream:6"]
    assert r.deny == (DenyItem(None, RAW, None, "raw"), DenyItem(AF_INET6, None, None, "inet6"),
                      DenyItem(AF_INET, DGRAM, 17, "inet:dgram:udp"),
                      DenyItem(None, STREAM, 6, "*:stream:6"))


@pytest.mark.parametrize("value, number", [
    ("0", 0), ("1", 1), ("42", 42), ("4294967295", 0xFFFFFFFF),
    ("0x0", 0), ("0x10", 16), ("0xff", 255), ("0xFF", 255), ("0xDeadBeef", 0xDEADBEEF),
    ("0xffffffff", 0xFFFFFFFF), ("0x00000000ffffffff", 0xFFFFFFFF),
    ("00", 0), ("010", 10), ("0004294967295", 0xFFFFFFFF),   # leading zeros: decimal
    ("0" * 5000 + "7", 7),                                     # beyond int()'s 4300-digit limit
])
def test_mark_and_priority_numbers(value, number):
    r = one(f"a mgmt mark={value} priority={value}")
    assert r.mark == number and r.priority == number
    assert type(r.mark) is int and type(r.priority) is int
    r = one(f"a mgmt priority={value}")
    assert r.priority == number and r.mark is None


def test_flags():
    r = one("a mgmt strict")
    assert r.strict is True and r.plain is False
    r = one("a veth0 plain")
    assert r.plain is True and r.strict is False
    r = one("a veth0 plain strict")
    assert r.plain and r.strict
    assert one("a default strict").strict is True   # refusing a failed move to the default VRF


def test_all_options_together_any_order():
    r = one("@ops mgmt strict priority=0x7 deny=inet6,raw plain mark=100 services=sshd,login", "x")
    assert fields(r) == expect(
        "@ops", "mgmt", frozenset({"sshd", "login"}),
        (DenyItem(AF_INET6, None, None, "inet6"), DenyItem(None, RAW, None, "raw")),
        100, 7, True, True, "x", 1)


@pytest.mark.parametrize("line", [
    "alice mgmt",
    "@netops mgmt services=sshd,login",
    "@contractors mgmt deny=inet6,raw strict",
    "root -",
    "root - services=cron",
    "* default",
    "* default services=login strict",
    "bob vrf-x deny=inet:stream:tcp,*:raw,10:2:17 mark=0x10 priority=010 strict plain",
    "carol mgmt services=z,a,m,a mark=4294967295 priority=0",
    "dave mgmt services=a=b,c",
    "eve eth0 plain deny=*:*:0",
])
def test_options_text_round_trip(line):
    rule = one(line)
    who, target = line.split()[:2]
    assert rule.who == who and rule.target == target
    text = rule.options_text()
    again = one(f"{rule.who} {rule.target} {text}".rstrip())
    assert same_rule(again, rule)
    assert again.options_text() == text          # normalised form is a fixed point


def test_options_text_is_normalised():
    r = one("a mgmt plain strict priority=0x10 mark=0xff deny=raw,inet6 services=sshd,login")
    assert r.options_text() == "services=login,sshd deny=raw,inet6 mark=255 priority=16 strict plain"
    assert one("a mgmt").options_text() == ""
    assert one("a - services=cron").options_text() == "services=cron"


def test_bytes_and_str_give_the_same_rules():
    text = "alice mgmt deny=inet6\n@grüppe default services=sshd\n# kommentar: größe\n* -\n"
    assert policy.parse(text, "f") == policy.parse(text.encode(), "f")
    assert one("jürgen mgmt".encode()).who == "jürgen"


def test_load_reads_file_and_names_it(tmp_path):
    path = tmp_path / "vrf.conf"
    path.write_bytes(b"# test\nalice mgmt strict\n* default\n")
    rules = policy.load(str(path))
    assert [(r.who, r.target, r.filename, r.line) for r in rules] == [
        ("alice", "mgmt", str(path), 2), ("*", "default", str(path), 3)]
    assert rules[0].where == f"{path}:2"


# --------------------------------------------------------------------------
# parse: errors name FILE:LINE and what is wrong
# --------------------------------------------------------------------------

@pytest.mark.parametrize("line, fragments", [
    # missing target
    ("alice", ["'alice' has no target", "WHO TARGET"]),
    ("alice # mgmt", ["'alice' has no target"]),
    # unknown options, flags with values, valued options without
    ("alice mgmt foo=bar", ["unknown option 'foo=bar'", "services", "strict"]),
    ("alice mgmt Strict", ["unknown option 'Strict'"]),
    ("alice mgmt =x", ["unknown option '=x'"]),
    ("alice mgmt strict=yes", ["option 'strict' takes no value"]),
    ("alice mgmt plain=", ["option 'plain' takes no value"]),
    ("alice mgmt mark", ["option 'mark' needs a value: mark=..."]),
    ("alice mgmt services", ["option 'services' needs a value"]),
    ("alice mgmt deny=", ["option 'deny=' has an empty value"]),
    ("alice mgmt services=", ["option 'services=' has an empty value"]),
    # options twice
    ("alice mgmt mark=1 mark=2", ["option 'mark' given twice"]),
    ("alice mgmt strict strict", ["option 'strict' given twice"]),
    ("alice mgmt services=a services=b", ["option 'services' given twice"]),
    ("alice mgmt deny=raw priority=1 deny=inet", ["option 'deny' given twice"]),
    # empty services items
    ("alice mgmt services=sshd,,login", ["empty name in services= list"]),
    ("alice mgmt services=sshd,", ["empty name in services= list"]),
    ("alice mgmt services=,sshd", ["empty name in services= list"]),
    ("alice mgmt services=,", ["empty name in services= list"]),
    # bad deny items
    ("alice mgmt deny=bogus", ["bad deny= list", "'bogus'"]),
    ("alice mgmt deny=inet,,raw", ["bad deny= list", "empty item"]),
    ("alice mgmt deny=raw,", ["bad deny= list", "empty item"]),
    ("alice mgmt deny=INET", ["bad deny= list", "'INET'"]),
    ("alice mgmt deny=unix:stream", ["bad deny= list", "unknown family 'unix'"]),
    ("alice mgmt deny=1:stream", ["bad deny= list", "only inet and inet6"]),
    ("alice mgmt deny=256:stream", ["bad deny= list", "family 256 is out of range (0-255)"]),
    ("alice mgmt deny=inet:16", ["bad deny= list", "type 16 is out of range (0-15)"]),
    ("alice mgmt deny=inet:stream:65536", ["bad deny= list", "protocol 65536 is out of range"]),
    ("alice mgmt deny=inet:stream:" + "9" * 5000, ["bad deny= list", "out of range (0-65535)"]),
    ("alice mgmt deny=inet:stream:bogus", ["bad deny= list", "unknown protocol 'bogus'"]),
    ("alice mgmt deny=inet:bogus", ["bad deny= list", "unknown type 'bogus'"]),
    ("alice mgmt deny=inet:stream:tcp:x", ["bad deny= list", "FAMILY:TYPE[:PROTO]"]),
    ("alice mgmt deny=inet:", ["bad deny= list", "unknown type ''"]),
    ("alice mgmt deny=*:*", ["bad deny= list", "would refuse every socket"]),
    ("alice mgmt deny=*:*:*", ["bad deny= list", "would refuse every socket"]),
    ("alice mgmt deny=inet:-1", ["bad deny= list", "unknown type '-1'"]),
    ("alice mgmt deny=inet:\u0663", ["bad deny= list", "unknown type"]),   # Arabic-Indic 3
    # numbers
    ("alice mgmt mark=4294967296", ["mark=4294967296 is larger than 32 bits"]),
    ("alice mgmt mark=0x100000000", ["mark=0x100000000 is larger than 32 bits"]),
    ("alice mgmt priority=99999999999", ["priority=99999999999 is larger than 32 bits"]),
    ("alice mgmt mark=1" + "0" * 5000, ["is larger than 32 bits"]),
    ("alice mgmt mark=0x1" + "0" * 5000, ["is larger than 32 bits"]),
    ("alice mgmt mark=abc", ["mark= needs a number, got 'abc'"]),
    ("alice mgmt mark=-1", ["mark= needs a number, got '-1'"]),
    ("alice mgmt mark=+1", ["mark= needs a number"]),
    ("alice mgmt mark=1.5", ["mark= needs a number"]),
    ("alice mgmt mark=1_000", ["mark= needs a number"]),
    ("alice mgmt mark=0x", ["mark= needs a number"]),
    ("alice mgmt mark=0X10", ["mark= needs a number"]),
    ("alice mgmt mark=0o17", ["mark= needs a number"]),
    ("alice mgmt mark=\u0661\u0662", ["mark= needs a number"]),          # Arabic-Indic 12
    ("alice mgmt mark=\uff11", ["mark= needs a number"]),                # fullwidth 1
    ("alice mgmt priority=ten", ["priority= needs a number, got 'ten'"]),
    # options that need a VRF target
    ("alice default deny=raw", ["option 'deny' needs a VRF target, not 'default'"]),
    ("alice default mark=1", ["option 'mark' needs a VRF target"]),
    ("alice default priority=1", ["option 'priority' needs a VRF target"]),
    ("alice default plain", ["option 'plain' needs a VRF target"]),
    ("alice - deny=raw", ["target '-' leaves the session alone", "option 'deny' makes no sense"]),
    ("alice - mark=1", ["target '-'", "option 'mark' makes no sense"]),
    ("alice - priority=1", ["target '-'", "option 'priority' makes no sense"]),
    ("alice - plain", ["target '-'", "option 'plain' makes no sense"]),
    ("alice - strict", ["target '-'", "option 'strict' makes no sense"]),
    # bad targets
    ("alice ../x", ["bad target '../x'", "'/'", "(or use 'default' or '-')"]),
    ("alice a/b", ["bad target 'a/b'", "'/'"]),
    ("alice ..", ["bad target '..'", "'.' and '..'"]),
    ("alice .", ["bad target '.'"]),
    ("alice " + "v" * 16, ["bad target '" + "v" * 16 + "'", "longer than 15 characters"]),
    ("alice a:b", ["bad target 'a:b'", "':'"]),
    ("alice mgmté", ["bad target 'mgmté'", "ASCII"]),
    ("alice mg\x01mt", ["bad target", "not allowed"]),
    ("alice mg\u200bmt", ["bad target", "not allowed"]),                # zero-width space
    # bad who
    ("@ mgmt", ["'@' needs a group name"]),
    ("@@ops mgmt", ["bad user or group '@@ops'", "USER, @GROUP or *"]),
    ("a*b mgmt", ["bad user or group 'a*b'"]),
    ("** mgmt", ["bad user or group '**'"]),
    ("@* mgmt", ["bad user or group '@*'"]),
    ("a:b mgmt", ["bad user or group 'a:b'"]),
    ("a,b mgmt", ["bad user or group 'a,b'"]),
    ("@a,b mgmt", ["bad user or group '@a,b'"]),
    # NUL characters, even in a comment
    ("alice mgmt\x00", ["NUL character"]),
    ("alice\x00 mgmt", ["NUL character"]),
    ("# comment \x00", ["NUL character"]),
    ("\x00", ["NUL character"]),
])
def test_errors_name_file_line_and_problem(line, fragments):
    for lineno, prefix in ((1, ""), (4, "# c\n\n* default\n")):
        for data in (prefix + line + "\nbob mgmt\n", (prefix + line).encode()):
            e = error(data, "/etc/security/vrf.conf")
            assert e.line == lineno
            assert str(e).startswith(f"/etc/security/vrf.conf:{lineno}: ")
            for fragment in fragments:
                assert fragment in e.message, (fragment, e.message)


def test_first_bad_line_is_reported():
    e = error("alice mgmt\n\nbob\ncarol mgmt foo\n", "f")
    assert e.line == 3 and "'bob' has no target" in e.message


@pytest.mark.parametrize("data, line", [
    (b"\xff alice mgmt\n", 1),
    (b"alice mgmt\n# ok\nbob mgmt # caf\xe9\n* default\n", 3),      # Latin-1, not UTF-8
    (b"a b\n\n\n\n\xc3", 5),                                          # truncated sequence at EOF
    (b"a b\nc d\n\xed\xa0\x80 e\n", 3),                                # encoded surrogate
    (b"a b\n\xc0\xaf x\n", 2),                                         # overlong '/'
    ("a b\n\u00e9t\u00e9 mgmt\n".encode("utf-8") + b"\n\x80", 4),
])
def test_invalid_utf8_names_the_line(data, line):
    e = error(data, "vrf.conf")
    assert e.line == line
    assert str(e) == f"vrf.conf:{line}: not valid UTF-8"


def test_configerror_attributes():
    e = error("x", "some/file")
    assert (e.filename, e.line) == ("some/file", 1)
    assert e.message == "'x' has no target: expected 'WHO TARGET [OPTIONS]'"
    assert isinstance(e, Exception)
    with pytest.raises(ConfigError) as info:
        policy.parse("x")
    assert info.value.filename == "<string>"


def test_load_missing_file_is_line_zero(tmp_path):
    path = str(tmp_path / "nope" / "vrf.conf")
    with pytest.raises(ConfigError) as info:
        policy.load(path)
    e = info.value
    assert e.line == 0 and e.filename == path
    assert str(e).startswith(f"{path}:0: cannot read: ")
    assert "No such file or directory" in e.message


def test_load_directory_is_line_zero(tmp_path):
    with pytest.raises(ConfigError) as info:
        policy.load(str(tmp_path))
    assert info.value.line == 0 and str(info.value).startswith(f"{tmp_path}:0: cannot read: ")


def test_load_reports_errors_with_the_path(tmp_path):
    path = tmp_path / "vrf.conf"
    path.write_bytes(b"alice mgmt\n\n@ mgmt\n")
    with pytest.raises(ConfigError) as info:
        policy.load(str(path))
    assert str(info.value) == f"{path}:3: '@' needs a group name"
    path.write_bytes(b"alice mgmt\n\xfe\n")
    with pytest.raises(ConfigError) as info:
        policy.load(str(path))
    assert str(info.value) == f"{path}:2: not valid UTF-8"


# --------------------------------------------------------------------------
# matching with fixed accounts (no NSS needed)
# --------------------------------------------------------------------------

def names(rule):
    return None if rule is None else (rule.who, rule.target, rule.line)


def test_decide_first_match_wins_and_services():
    rules = policy.parse(
        "bob     vrf-a   services=sshd\n"     # 1
        "bob     vrf-b   services=login,su\n"  # 2
        "alice   vrf-c\n"                       # 3
        "alice   vrf-d\n"                       # 4: shadowed by line 3
        "*       default services=cron\n"       # 5
        "bob     -\n")                          # 6
    bob = policy.Account("bob", frozenset())
    alice = policy.Account("alice", frozenset())
    carol = policy.Account("carol", frozenset())
    assert names(policy.decide(rules, bob, "sshd")) == ("bob", "vrf-a", 1)
    assert names(policy.decide(rules, bob, "login")) == ("bob", "vrf-b", 2)
    assert names(policy.decide(rules, bob, "su")) == ("bob", "vrf-b", 2)
    assert names(policy.decide(rules, bob, "cron")) == ("*", "default", 5)
    assert names(policy.decide(rules, bob, "other")) == ("bob", "-", 6)
    assert names(policy.decide(rules, bob, None)) == ("bob", "-", 6)    # None never matches services=
    assert names(policy.decide(rules, bob, "SSHD")) == ("bob", "-", 6)  # case matters
    assert names(policy.decide(rules, alice, "sshd")) == ("alice", "vrf-c", 3)
    assert names(policy.decide(rules, alice, None)) == ("alice", "vrf-c", 3)
    assert names(policy.decide(rules, carol, "cron")) == ("*", "default", 5)
    assert policy.decide(rules, carol, "sshd") is None
    assert policy.decide(rules, carol, None) is None
    assert policy.decide((), bob, "sshd") is None


def test_decide_returns_the_rule_object_itself():
    rules = policy.parse("a x\n* y\n")
    assert policy.decide(rules, policy.Account("a", frozenset()), "s") is rules[0]
    assert policy.decide(rules, policy.Account("b", frozenset()), "s") is rules[1]


def test_decide_user_name_is_not_a_prefix_or_group():
    rules = policy.parse("alice x\n@alice y\n")
    assert policy.decide(rules, policy.Account("alic", frozenset()), None) is None
    assert policy.decide(rules, policy.Account("alice2", frozenset()), None) is None
    assert policy.decide(rules, policy.Account("Alice", frozenset()), None) is None


# --------------------------------------------------------------------------
# matching through NSS with real throwaway users and groups
# --------------------------------------------------------------------------

def _exists(kind, name):
    getter = pwd.getpwnam if kind == "user" else grp.getgrnam
    try:
        getter(name)
        return True
    except KeyError:
        return False


def _run(*argv):
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def nss_accounts():
    """Real users and groups, removed again whatever happens.

    groups: g1, g2, g3, g4 (g4 has no members)
    users:  a (primary g1; supplementary g2 via usermod -aG, g3 via gpasswd -a)
            b (primary g2; no supplementary groups)
            c (own user-private group; supplementary g1)
    """
    base = f"pvt{os.getpid()}"
    if any(_exists("user", base + s) or _exists("group", base + s)
           for s in ("a", "b", "c", "g1", "g2", "g3", "g4", "nouser")):
        base = f"pvt{secrets.token_hex(4)}"       # never touch existing accounts
    users, groups = [], []
    try:
        for g in ("g1", "g2", "g3", "g4"):
            name = base + g
            assert not _exists("group", name)
            _run("groupadd", name)
            groups.append(name)
        for u, opts in (("a", ["-N", "-g", base + "g1"]), ("b", ["-N", "-g", base + "g2"]),
                        ("c", ["-U"])):
            name = base + u
            assert not _exists("user", name) and not _exists("group", name)
            _run("useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", *opts, name)
            users.append(name)
            if u == "c":
                groups.append(name)              # user-private group, removed by userdel too
        _run("usermod", "-aG", base + "g2", base + "a")
        _run("gpasswd", "-a", base + "a", base + "g3")
        _run("usermod", "-aG", base + "g1", base + "c")
        assert len(base + "nouser") <= 32
        assert not _exists("user", base + "nouser")
        yield base
    finally:
        for name in users:
            subprocess.run(["userdel", "-f", name], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name in groups:
            if _exists("group", name):
                subprocess.run(["groupdel", name], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        leftover = [n for n in users if _exists("user", n)] + \
                   [n for n in groups if _exists("group", n)]
        assert not leftover, f"could not remove {leftover}"


@pytest.mark.root
def test_account_lists_primary_and_supplementary_groups(nss_accounts):
    p = nss_accounts
    gid = {g: grp.getgrnam(p + g).gr_gid for g in ("g1", "g2", "g3", "g4")}
    a = policy.account(p + "a")
    assert a.user == p + "a"
    assert a.gids == frozenset({gid["g1"], gid["g2"], gid["g3"]})
    assert policy.account(p + "b").gids == frozenset({gid["g2"]})
    c = policy.account(p + "c")
    assert c.gids == frozenset({pwd.getpwnam(p + "c").pw_gid, gid["g1"]})
    assert policy.account(p + "nouser") == policy.Account(p + "nouser", frozenset())


@pytest.mark.root
def test_group_rules_match_primary_and_supplementary_groups(nss_accounts):
    p = nss_accounts
    rules = policy.parse(
        f"@{p}g4  vrf-empty\n"               # 1: nobody is in g4
        f"@{p}nogroup vrf-none\n"            # 2: no such group
        f"@{p}g3  vrf-g3   services=sshd\n"  # 3: a, supplementary via gpasswd
        f"@{p}g1  vrf-g1\n"                  # 4: a (primary), c (supplementary)
        f"@{p}g2  vrf-g2\n"                  # 5: b (primary), a (supplementary)
        f"*       default\n")                # 6
    for who in (p + "a", policy.account(p + "a")):      # name or Account
        assert names(policy.decide(rules, who, "sshd")) == (f"@{p}g3", "vrf-g3", 3)
        assert names(policy.decide(rules, who, "login")) == (f"@{p}g1", "vrf-g1", 4)
        assert names(policy.decide(rules, who, None)) == (f"@{p}g1", "vrf-g1", 4)
    assert names(policy.decide(rules, p + "b", "sshd")) == (f"@{p}g2", "vrf-g2", 5)
    assert names(policy.decide(rules, p + "c", "sshd")) == (f"@{p}g1", "vrf-g1", 4)
    assert names(policy.decide(rules, p + "nouser", "sshd")) == ("*", "default", 6)


@pytest.mark.root
def test_supplementary_only_membership(nss_accounts):
    p = nss_accounts
    # a's primary group is g1: g2 (usermod -aG) and g3 (gpasswd -a) are supplementary only.
    for g in ("g2", "g3"):
        rules = policy.parse(f"@{p}{g} vrf-{g}\n")
        assert names(policy.decide(rules, p + "a", "sshd")) == (f"@{p}{g}", f"vrf-{g}", 1)
        assert policy.decide(rules, policy.Account(p + "a", frozenset()), "sshd") is None
    rules = policy.parse(f"@{p}g3 vrf-g3\n")
    assert policy.decide(rules, p + "b", "sshd") is None
    assert policy.decide(rules, p + "c", "sshd") is None


@pytest.mark.root
def test_membership_change_is_seen_on_next_decision(nss_accounts):
    p = nss_accounts
    rules = policy.parse(f"@{p}g4 vrf-g4\n* -\n")
    assert names(policy.decide(rules, p + "b", None)) == ("*", "-", 2)
    _run("gpasswd", "-a", p + "b", p + "g4")
    assert names(policy.decide(rules, p + "b", None)) == (f"@{p}g4", "vrf-g4", 1)
    _run("gpasswd", "-d", p + "b", p + "g4")
    assert names(policy.decide(rules, p + "b", None)) == ("*", "-", 2)


@pytest.mark.root
def test_user_rules_win_by_order_over_group_rules(nss_accounts):
    p = nss_accounts
    rules = policy.parse(f"@{p}g1 vrf-grp\n{p}a vrf-user\n")
    assert names(policy.decide(rules, p + "a", None)) == (f"@{p}g1", "vrf-grp", 1)
    rules = policy.parse(f"{p}a vrf-user\n@{p}g1 vrf-grp\n")
    assert names(policy.decide(rules, p + "a", None)) == (f"{p}a", "vrf-user", 1)
    assert names(policy.decide(rules, p + "c", None)) == (f"@{p}g1", "vrf-grp", 2)


@pytest.mark.root
def test_unknown_user_matches_only_name_and_star_rules(nss_accounts):
    p = nss_accounts
    ghost = p + "nouser"
    every_group = "".join(f"@{p}{g} vrf-{g}\n" for g in ("g1", "g2", "g3", "g4"))
    every_group += "@root vrf-root\n@nogroup vrf-nogroup\n"
    rules = policy.parse(every_group + f"{ghost} vrf-ghost\n* default\n")
    assert names(policy.decide(rules, ghost, "sshd"))[:2] == (ghost, "vrf-ghost")
    rules = policy.parse(every_group + "* default\n")
    assert names(policy.decide(rules, ghost, "sshd"))[:2] == ("*", "default")
    assert policy.decide(policy.parse(every_group), ghost, "sshd") is None
    # Even a group named like the unknown user does not make it a member.
    rules = policy.parse(f"@{p}a vrf-x\n")
    assert policy.decide(rules, ghost, None) is None


def _decoy_rules(p, count):
    return "".join(f"@{p}decoy{i} vrf-d{i % 10}\n" for i in range(count))


@pytest.mark.root
def test_enumeration_path_gives_same_decisions(nss_accounts, monkeypatch):
    p = nss_accounts
    above = policy.GroupNames.ENUMERATE_ABOVE
    body = (f"@{p}g4 vrf-g4\n"
            f"@{p}g3 vrf-g3 services=sshd\n"
            f"@{p}g2 vrf-g2 services=login\n"
            f"@{p}g1 vrf-g1\n"
            f"@root vrf-root\n"
            f"{p}b vrf-b services=su\n"
            f"* default services=cron\n")
    # Decoy groups that do not exist push the count of distinct @groups over the limit.
    many = policy.parse(_decoy_rules(p, above + 1) + body)
    few = policy.parse(body)
    assert len({r.who for r in many if r.who.startswith("@")}) > above
    assert len({r.who for r in few if r.who.startswith("@")}) <= above

    calls = {"getgrall": 0, "getgrnam": []}
    real_getgrall, real_getgrnam = nss.groups_by_gid, nss.group

    def counting_getgrall():
        calls["getgrall"] += 1
        return real_getgrall()

    def counting_getgrnam(name):
        calls["getgrnam"].append(name)
        return real_getgrnam(name)

    monkeypatch.setattr(policy.nss, "groups_by_gid", counting_getgrall)
    monkeypatch.setattr(policy.nss, "group", counting_getgrnam)

    who_list = [p + "a", p + "b", p + "c", p + "nouser", "root"]
    services = ["sshd", "login", "su", "cron", None, "other"]
    results = {}
    for who in who_list:
        for service in services:
            calls["getgrall"], calls["getgrnam"] = 0, []
            enumerated = policy.decide(many, who, service)
            used_enumeration = calls["getgrall"]
            calls["getgrall"], calls["getgrnam"] = 0, []
            per_name = policy.decide(few, who, service)
            assert calls["getgrall"] == 0
            # Same rules, per-name path forced: identical decision too.
            monkeypatch.setattr(policy.GroupNames, "ENUMERATE_ABOVE", 10 ** 9)
            forced = policy.decide(many, who, service)
            monkeypatch.setattr(policy.GroupNames, "ENUMERATE_ABOVE", above)
            key = (who, service)
            results[key] = names(per_name)
            assert (enumerated is None) == (per_name is None) == (forced is None), key
            if per_name is not None:
                assert enumerated.who == per_name.who == forced.who, key
                assert enumerated.target == per_name.target == forced.target, key
                assert enumerated is forced
            if enumerated is not None and enumerated.who.startswith("@"):
                assert used_enumeration == 1, key          # one enumeration per decision
    # The comparison is not vacuous: group rules decided several of these.
    assert results[(p + "a", "sshd")][:2] == (f"@{p}g3", "vrf-g3")
    assert results[(p + "a", "login")][:2] == (f"@{p}g2", "vrf-g2")
    assert results[(p + "a", None)][:2] == (f"@{p}g1", "vrf-g1")
    assert results[(p + "b", "sshd")] is None                  # not in g3; g2 only for login
    assert results[(p + "b", "login")][:2] == (f"@{p}g2", "vrf-g2")
    assert results[(p + "b", "su")][:2] == (f"{p}b", "vrf-b")
    assert results[(p + "c", "other")][:2] == (f"@{p}g1", "vrf-g1")
    assert results[(p + "nouser", "cron")][:2] == ("*", "default")
    assert results[(p + "nouser", "sshd")] is None
    assert results[("root", None)][:2] == ("@root", "vrf-root")


@pytest.mark.root
def test_enumeration_resolves_found_names_without_lookups(nss_accounts, monkeypatch):
    p = nss_accounts
    rules = policy.parse(_decoy_rules(p, policy.GroupNames.ENUMERATE_ABOVE + 5) + f"@{p}g1 vrf-g1\n")
    looked_up = []
    real_group = nss.group
    monkeypatch.setattr(policy.nss, "group", lambda n: looked_up.append(n) or real_group(n))
    assert names(policy.decide(rules, p + "a", None))[:2] == (f"@{p}g1", "vrf-g1")
    # The account's gids were named from the enumeration: no name is looked up,
    # not even the decoys the database does not know (the slow case with LDAP).
    assert looked_up == []


@pytest.mark.root
def test_enumeration_falls_back_to_lookup_for_hidden_groups(nss_accounts, monkeypatch):
    """SSSD/LDAP without enumerate: a group missing from getgrall() still matches."""
    p = nss_accounts
    hidden = {f"{p}g2", f"{p}g3"}
    real_getgrall = nss.groups_by_gid
    monkeypatch.setattr(policy.nss, "groups_by_gid",
                        lambda: {gid: names for gid, names in real_getgrall().items() if not hidden & set(names)})
    body = f"@{p}g3 vrf-g3 services=sshd\n@{p}g2 vrf-g2\n* -\n"
    many = policy.parse(_decoy_rules(p, policy.GroupNames.ENUMERATE_ABOVE + 1) + body)
    assert names(policy.decide(many, p + "a", "sshd"))[:2] == (f"@{p}g3", "vrf-g3")
    assert names(policy.decide(many, p + "a", "login"))[:2] == (f"@{p}g2", "vrf-g2")
    assert names(policy.decide(many, p + "b", "sshd"))[:2] == (f"@{p}g2", "vrf-g2")
    assert names(policy.decide(many, p + "c", "sshd"))[:2] == ("*", "-")


def test_group_names_caches_each_name_once(monkeypatch):
    looked_up = []
    real_group = nss.group
    monkeypatch.setattr(policy.nss, "group", lambda n: looked_up.append(n) or real_group(n))
    groups = policy.GroupNames(policy.Account("root", frozenset({0})), 1)
    assert groups.member("root") is True
    assert groups.member("root") is True
    missing = f"pvt{os.getpid()}missing"
    assert groups.member(missing) is False
    assert groups.member(missing) is False
    assert looked_up == ["root", missing]


def test_exec_option_lists_vrfs_and_plain_may_describe_them():
    rule = policy.parse("@ops default exec=mgmt,default,veth1 plain", "vrf.conf")[0]
    assert rule.exec == frozenset({"mgmt", "default", "veth1"}) and rule.plain
    assert "exec=default,mgmt,veth1" in rule.options_text()
    assert policy.parse("alice - exec=mgmt", "vrf.conf")[0].exec == frozenset({"mgmt"})
    for text, message in (("a default plain", "option 'plain' needs a VRF target"),
                          ("a mgmt exec=../x", "bad VRF '../x' in exec= list"),
                          ("a mgmt exec=x,,y", "in exec= list: empty name")):
        with pytest.raises(policy.ConfigError) as e:
            policy.parse(text, "vrf.conf")
        assert str(e.value).startswith("vrf.conf:1: ") and message in str(e.value), str(e.value)


def test_a_leading_byte_order_mark_is_not_part_of_the_first_name():
    for data in ("\ufeffalice mgmt\n", "\ufeffalice mgmt\n".encode("utf-8")):
        assert policy.parse(data, "vrf.conf")[0].who == "alice"


# -- name-service failures and the helper-less decision ------------------------

class _Recorder:
    """A Logger stand-in that keeps what would have gone to syslog."""

    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda message: self.lines.append((level, message))


def _failing_nss(monkeypatch):
    def fail(name):
        raise nss.NssError(f"cannot look up group {name!r}: Input/output error")
    monkeypatch.setattr(policy.nss, "group", fail)


def test_nss_failure_makes_group_rules_undecidable(monkeypatch):
    _failing_nss(monkeypatch)
    rules = policy.parse("root -\n@ops mgmt\n@dev mgmt strict\n* default\n", "vrf.conf")
    assert names(policy.decide(rules, "root", "sshd")) == ("root", "-", 1)   # decided before any group
    with pytest.raises(policy.Undecidable) as e:
        policy.decide(rules, "root2", "sshd")
    assert e.value.rule.line == 2 and e.value.strict       # a later strict rule could apply
    rules = policy.parse("@ops mgmt\n* default\n@dev mgmt strict services=login\n", "vrf.conf")
    with pytest.raises(policy.Undecidable) as e:
        policy.decide(rules, "root", "sshd")
    assert not e.value.strict                               # the strict rule is for login only


def test_offline_decision_refuses_only_where_a_strict_rule_applies(vrf_conf, monkeypatch):
    from pam_vrf import offline
    config = vrf_conf("root -\n@pvtnosuchgroup mgmt strict\npvtbob mgmt\n* default\n")
    log = _Recorder()
    why = "helper not running (no socket /x)"
    assert offline.decide("root", "sshd", config, why, log) == offline.PROCEED
    assert offline.decide("pvtbob", "sshd", config, why, log) == offline.PROCEED
    assert ("err", f"user pvtbob (service sshd) left unplaced: {why} (rule {config}:3, VRF mgmt)") in log.lines
    strict = vrf_conf("* mgmt strict\n")
    assert offline.decide("pvtbob", "sshd", strict, why, log) == offline.REFUSE
    assert any(level == "err" and "refusing session of user pvtbob" in m and "strict rule" in m
               for level, m in log.lines)
    broken = vrf_conf("* mgmt strict\n@oops\n")
    assert offline.decide("pvtbob", "sshd", broken, why, log) == offline.PROCEED
    assert any(f"{broken}:2:" in m for _, m in log.lines)
    _failing_nss(monkeypatch)
    assert offline.decide("pvtbob", "sshd", config, why, log) == offline.REFUSE
    assert any("cannot decide rule" in m and "Input/output error" in m for _, m in log.lines)


@pytest.mark.root
def test_indexed_decisions_equal_the_walk(nss_accounts, monkeypatch):
    """Large policies are decided through an index (policy.INDEX_ABOVE): the
    same first match as walking every line, for random policies mixing names,
    '*', real and unknown groups and services= lists."""
    import random
    p = nss_accounts
    rng = random.Random(8)
    whos = [f"{p}a", f"{p}b", f"{p}c", "nobody", "*", f"@{p}g1", f"@{p}g2", f"@{p}g3", f"@{p}g4",
            *(f"@{p}decoy{i}" for i in range(40))]
    users = [f"{p}a", f"{p}b", f"{p}c", "nobody", "pvtnosuchuser"]
    for round_ in range(12):
        lines = []
        for i in range(policy.INDEX_ABOVE + rng.randrange(50, 400)):
            who = rng.choice(whos) if rng.random() < 0.97 else "*"
            services = f" services={rng.choice(['sshd', 'login', 'sshd,cron'])}" if rng.random() < 0.4 else ""
            lines.append(f"{who} vrf{i % 97}{services}")
        rules = policy.parse("\n".join(lines) + "\n", "vrf.conf")
        for user in users:
            for service in ("sshd", "login", "cron", None, policy.ANY_SERVICE):
                indexed = policy.decide(rules, user, service)
                monkeypatch.setattr(policy, "INDEX_ABOVE", 10 ** 9)
                walked = policy.decide(rules, user, service)
                monkeypatch.setattr(policy, "INDEX_ABOVE", 256)
                assert indexed == walked, (round_, user, service, indexed, walked)


# -- issue 14 item 7: a name rule matches the account, not the spelling ------------

@pytest.mark.parametrize("padding", [0, policy.INDEX_ABOVE + 1])     # the walk, and the index
def test_name_rules_match_the_accounts_nss_name_and_the_given_spelling(padding):
    text = "".join(f"pad{i}  default\n" for i in range(padding))
    rules = policy.parse(text + "alice  vt1  plain strict\nALICE  vt2  plain\n*  -\n", "vrf.conf")
    spelled = policy.Account("alice", frozenset(), None, "ALICE")      # NSS: ALICE is alice
    assert policy.decide(rules, spelled, "sshd").where == f"vrf.conf:{padding + 1}"
    # The spelling PAM gave still meets a rule written that way (first match wins).
    rules = policy.parse(text + "ALICE  vt2  plain\nalice  vt1  plain strict\n*  -\n", "vrf.conf")
    assert policy.decide(rules, spelled, "sshd").where == f"vrf.conf:{padding + 1}"
    # No NSS answer: the name as given, nothing else.
    assert policy.decide(rules, policy.Account("ALICE", frozenset()), "sshd").where == f"vrf.conf:{padding + 1}"
    assert policy.decide(rules, policy.Account("Alice", frozenset()), "sshd").where == f"vrf.conf:{padding + 3}"


def test_a_failing_name_service_leaves_a_strict_rule_of_either_spelling_undecidable():
    rules = policy.parse("@ops  vt1  plain\nALICE  vt2  plain strict\n*  -\n", "vrf.conf")
    with pytest.raises(policy.Undecidable) as e:
        policy.decide(rules, policy.Account("ALICE", frozenset(), "cannot look up user 'ALICE': EIO"), "sshd")
    assert e.value.strict


def _fake_passwd(monkeypatch, entries, down=()):
    """nss.user() answering from `entries` {spelling: (name, uid)}; NssError for `down`."""
    def user(name):
        if name in down:
            raise nss.NssError(f"cannot look up user {name!r}: Host is down")
        found = entries.get(name)
        return nss.User(found[0], found[1], found[1]) if found else None
    monkeypatch.setattr(policy.nss, "user", user)
    monkeypatch.setattr(policy.nss, "gids", lambda entry: frozenset([entry.gid]))


@pytest.mark.parametrize("padding", [0, policy.INDEX_ABOVE + 1])     # the walk, and the index
def test_nss_name_counts_only_if_it_leads_back_to_the_same_uid(monkeypatch, padding):
    """SSSD (case_sensitive=false) reports AD's ADMIN as 'admin', and files has
    a local 'admin' (another uid): ADMIN is not admin, nor in admin's groups."""
    text = "".join(f"pad{i}  default\n" for i in range(padding))
    rules = policy.parse(text + "admin  default\nADMIN  vt2  plain\n*  vt1  plain strict\n", "vrf.conf")
    _fake_passwd(monkeypatch, {"admin": ("admin", 1000), "ADMIN": ("admin", 5000), "Admin": ("admin", 5000)})
    assert policy.account("ADMIN") == policy.Account("ADMIN", frozenset([5000]))
    assert policy.decide(rules, "ADMIN", "sshd").where == f"vrf.conf:{padding + 2}"
    assert policy.decide(rules, "Admin", "sshd").where == f"vrf.conf:{padding + 3}"
    assert policy.decide(rules, "admin", "sshd").where == f"vrf.conf:{padding + 1}"
    # Same uid both ways (SSSD alone): the NSS name is the account's.
    _fake_passwd(monkeypatch, {"admin": ("admin", 5000), "Admin": ("admin", 5000)})
    assert policy.decide(rules, "Admin", "sshd").where == f"vrf.conf:{padding + 1}"
    # The way back fails: undecided like any NSS failure.
    _fake_passwd(monkeypatch, {"Admin": ("admin", 5000)}, down={"admin"})
    assert policy.account("Admin").error
    # pam-vrf exec: getpwuid named uid 5000 'admin', which is uid 1000's name.
    _fake_passwd(monkeypatch, {"admin": ("admin", 1000)})
    assert policy.account("admin", 1000) == policy.Account("admin", frozenset([1000]), None, "admin")
    shadowed = policy.account("admin", 5000)
    assert shadowed.error and "uid 1000" in shadowed.error
    assert policy.decide(rules, shadowed, policy.ANY_SERVICE).where == f"vrf.conf:{padding + 3}"
    with pytest.raises(policy.Undecidable):
        policy.decide(policy.parse("admin x exec=x\n@wheel y\n* z\n"), shadowed, policy.ANY_SERVICE)


@pytest.mark.parametrize("padding", [0, policy.INDEX_ABOVE + 1])
@pytest.mark.parametrize("given", ["ALICE", "Alice", "alice@ad.example", "AD\\alice", "ALICE@AD"])
def test_nss_down_leaves_a_name_rule_of_another_spelling_undecidable(monkeypatch, given, padding):
    text = "".join(f"pad{i}  default\n" for i in range(padding))
    _fake_passwd(monkeypatch, {}, down={given})
    rules = policy.parse(text + "bob  vt3  plain\nalice  vt1  plain strict\n*  -\n", "vrf.conf")
    with pytest.raises(policy.Undecidable) as e:
        policy.decide(rules, given, "sshd")
    assert e.value.rule.line == padding + 2 and e.value.strict
    # Not strict when neither it nor a later rule that could apply is.
    rules = policy.parse(text + "Alice@Ad.Example  vt1  plain\n*  -\nalice vt2 strict services=login\n")
    with pytest.raises(policy.Undecidable) as e:
        policy.decide(rules, given, "sshd")
    assert e.value.rule.line == padding + 1 and not e.value.strict
    # A name that is no spelling of the account, and the exact spelling, are decided.
    assert policy.decide(rules, "carol", "sshd").who == "*"
    assert policy.decide(policy.parse(f"{given} vt4 plain\nalice vt1 strict\n"), given, "sshd").target == "vt4"


def test_indexed_decisions_equal_the_walk_for_other_spellings_and_a_failing_nss(monkeypatch):
    """The index gives the walk's answer, Undecidable included (same rule, same
    strictness), for spellings NSS resolves, shadows or cannot look up."""
    import random
    rng = random.Random(14)
    _fake_passwd(monkeypatch, {"alice": ("alice", 1000), "ALICE": ("alice", 1000), "admin": ("admin", 1001),
                               "ADMIN": ("admin", 5000)}, down={"Alice", "alice@ad", "AD\\ALICE", "Bob"})
    whos = ["alice", "ALICE", "Alice", "alice@ad", "AD\\alice", "admin", "ADMIN", "bob", "Bob", "carol", "*",
            "@pvtnosuchgroup1", "@pvtnosuchgroup2"]
    users = ["alice", "ALICE", "Alice", "alice@ad", "AD\\ALICE", "admin", "ADMIN", "Bob", "carol"]

    def outcome(rules, user, service):
        try:
            rule = policy.decide(rules, user, service)
            return rule and rule.line
        except policy.Undecidable as e:
            return ("undecidable", e.rule.line, e.strict)
    for round_ in range(8):
        pick = whos if round_ % 2 else whos[:-2]        # without groups too: the index is used then
        lines = [f"{rng.choice(pick) if rng.random() < 0.98 else '*'} vrf{i % 97}"
                 f"{' strict' if rng.random() < 0.1 else ''}"
                 f"{' services=' + rng.choice(['sshd', 'login']) if rng.random() < 0.3 else ''}"
                 for i in range(policy.INDEX_ABOVE + rng.randrange(50, 300))]
        rules = policy.parse("\n".join(lines) + "\n", "vrf.conf")
        for user in users:
            for service in ("sshd", "login", policy.ANY_SERVICE):
                indexed = outcome(rules, user, service)
                monkeypatch.setattr(policy, "INDEX_ABOVE", 10 ** 9)
                walked = outcome(rules, user, service)
                monkeypatch.setattr(policy, "INDEX_ABOVE", 256)
                assert indexed == walked, (round_, user, service, indexed, walked)
