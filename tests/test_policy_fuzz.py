"""Fuzz pam_vrf.policy.parse with generated and mutated vrf.conf texts.

Reproducible: every run uses the same seed unless PAM_VRF_FUZZ_SEED is set
(PAM_VRF_FUZZ_CASES changes the number of texts per kind). A failure names
the seed, the kind and the number of the text, and shows the text.

Properties:
- parse() returns a tuple of Rule or raises ConfigError, nothing else;
- a ConfigError has 1 <= line <= lines in the text and reads "FILE:LINE: message"
  (one line); the line it names is the first bad one: every line before it
  parses, and that line alone fails with the same message;
- str and UTF-8 bytes input give the same result; undecodable bytes fail at
  the first line that is not UTF-8;
- texts from the grammar's valid tokens always parse, into exactly the rules
  that were generated;
- parsed rules satisfy the format's invariants and survive options_text().
"""

import os
import random
import re
import socket

import pytest

from pam_vrf import policy
from pam_vrf.netdev import check_ifname
from pam_vrf.sockspec import DenyItem

SEED = int(os.environ.get("PAM_VRF_FUZZ_SEED", "1613"))
CASES = int(os.environ.get("PAM_VRF_FUZZ_CASES", "5000"))   # per kind; 4 kinds
FILENAME = "/etc/security/vrf.conf"

AF_INET, AF_INET6 = int(socket.AF_INET), int(socket.AF_INET6)
STREAM, DGRAM, RAW, SEQPACKET = (int(socket.SOCK_STREAM), int(socket.SOCK_DGRAM),
                                 int(socket.SOCK_RAW), int(socket.SOCK_SEQPACKET))
U32_MAX = 0xFFFFFFFF

# ---------------------------------------------------------------- tokens --

WHO_OK = ["alice", "bob", "root", "svc-1", "a.b", "_x", "jürgen", "user=x", "x$",
          "@netops", "@wheel", "@g-1", "@grüppe", "*"]
WHO_BAD = ["@", "@@x", "a*b", "a:b", "a,b", "**", "@*", "@a:b", "*x", "@,"]

VRF_OK = ["mgmt", "vrf-blue", "eth0", "veth0", "v" * 15, "a.b", "x_1", "blue@1", "*", "%d"]
TARGET_OK = VRF_OK + ["default", "-"]
TARGET_BAD = ["v" * 16, "../x", "a/b", "a:b", ".", "..", "mgmté", "a\x01b", "/", "x\u200by"]

SERVICES_OK = ["sshd", "login", "su", "cron", "sudo", "sshd-foo", "gdm-password", "a=b", "é"]
SERVICES_BAD = ["", "sshd,", ",", "a,,b", ",sshd"]

DENY_OK = [
    ("inet", (AF_INET, None, None)), ("inet6", (AF_INET6, None, None)),
    ("stream", (None, STREAM, None)), ("dgram", (None, DGRAM, None)),
    ("raw", (None, RAW, None)), ("seqpacket", (None, SEQPACKET, None)),
    ("inet:stream", (AF_INET, STREAM, None)), ("inet6:dgram:udp", (AF_INET6, DGRAM, 17)),
    ("inet:raw:icmp", (AF_INET, RAW, 1)), ("inet6:raw:icmpv6", (AF_INET6, RAW, 58)),
    ("*:raw", (None, RAW, None)), ("inet:*", (AF_INET, None, None)),
    ("*:*:tcp", (None, None, 6)), ("2:1:6", (AF_INET, STREAM, 6)),
    ("10:2", (AF_INET6, DGRAM, None)), ("*:15", (None, 15, None)),
    ("*:*:65535", (None, None, 65535)), ("inet:stream:mptcp", (AF_INET, STREAM, 262)),
    ("inet:0002:0017", (AF_INET, DGRAM, 17)), ("*:dgram:*", (None, DGRAM, None)),
]
DENY_BAD = ["unix", "1:stream", "*:*", "*:*:*", "inet:16", "inet:stream:65536", "inet::",
            "", "inet:stream:tcp:x", "INET", "inet:-1", "256:raw", "inet:\u0663", "inet:",
            "*:*:" + "9" * 40]

NUMBER_OK = [("0", 0), ("1", 1), ("42", 42), ("4294967295", U32_MAX), ("0x10", 16),
             ("0xFFFFFFFF", U32_MAX), ("0xdeadBEEF", 0xDEADBEEF), ("010", 10), ("00", 0),
             ("0" * 30 + "5", 5), ("0x" + "0" * 30 + "1", 1)]
NUMBER_BAD = ["4294967296", "0x100000000", "-1", "abc", "0x", "1.5", "\u0661", "0X1", "1e3",
              "9" * 50, "+1", "1_0", "0b1", "0x1g", ""]

FLAG_BAD = ["strict=1", "plain=", "Strict", "mark", "services", "deny", "priority", "foo",
            "=", "foo=bar", "=1", "strict=", "PLAIN"]

SEPARATORS = [" ", "  ", "\t", " \t ", "\t\t", " \x0b", "\xa0", "\u3000"]
COMMENTS = ["# comment", "#", "#alice mgmt", "# deny=bogus mark=x", "## ## #", "# größe ü"]

# Characters and bytes mutations insert.
SPECIAL_CHARS = ["\x00", "#", "=", ",", ":", "@", "*", "/", " ", "\t", "\n", "\r", "\x0b",
                 "\x0c", "\x1c", "\x85", "\xa0", "\u2028", "\u200b", "\ufeff", "-", ".",
                 "x", "0", "9", "\ud800", "\U0001F600", "é", "\x7f", "'", "\\"]
SPECIAL_BYTES = [b"\x00", b"#", b"=", b",", b":", b"\n", b"\r", b"\x80", b"\xff", b"\xc3",
                 b"\xc3\xa9", b"\xed\xa0\x80", b"\xe2\x80\xa8", b"\xf0\x9f\x98\x80",
                 b"\xef\xbb\xbf", b"@", b"*", b" ", b"\t", b"\xc0\xaf"]


# ------------------------------------------------------------- generator --

class Gen:
    """vrf.conf texts from the grammar; bad tokens with probability `noise`."""

    def __init__(self, rng, noise):
        self.rng = rng
        self.noise = noise

    def bad(self):
        return self.rng.random() < self.noise

    def sep(self):
        return self.rng.choice(SEPARATORS) if self.rng.random() < 0.3 else " "

    def text(self):
        """(text, expected rule fields or None); expected only when no bad token was used."""
        rng = self.rng
        lines, expected, clean = [], [], True
        for number in range(1, rng.randint(1, 12) + 1):
            line, rule, ok = self.line(number)
            lines.append(line)
            clean = clean and ok
            if rule is not None:
                expected.append(rule)
        end = rng.choice(["\n", "\n", "\r\n"])
        text = end.join(lines) + (end if rng.random() < 0.7 else "")
        return text, (tuple(expected) if clean else None)

    def line(self, number):
        rng = self.rng
        kind = rng.random()
        if kind < 0.08:
            return rng.choice(["", " ", "\t", "  \t"]), None, True
        if kind < 0.16:
            return rng.choice(["", " ", "\t"]) + rng.choice(COMMENTS), None, True
        ok = True
        if self.bad():
            who, ok = rng.choice(WHO_BAD), False
        else:
            who = rng.choice(WHO_OK)
        if self.bad():
            target, ok = rng.choice(TARGET_BAD), False
        else:
            target = rng.choice(TARGET_OK)
        if self.bad() and rng.random() < 0.3:        # missing target
            words, ok = [who], False
        else:
            words = [who, target]
        allowed = {"-": ["services"],
                   "default": ["services", "strict"]}.get(
                       target, ["services", "deny", "mark", "priority", "strict", "plain"])
        kinds = ["services", "deny", "mark", "priority", "strict", "plain"]
        if not self.bad():
            kinds = allowed
        chosen = [k for k in kinds if rng.random() < 0.35]
        if self.bad() and chosen:
            chosen.append(rng.choice(chosen))          # an option twice
            ok = False
        if any(k not in allowed for k in chosen):
            ok = False
        rng.shuffle(chosen)
        values = {}
        for key in chosen:
            word, value, good = self.option(key)
            words.append(word)
            values[key] = value
            ok = ok and good
        if self.bad():
            words.insert(rng.randint(2, max(2, len(words))), rng.choice(FLAG_BAD))
            ok = False
        line = rng.choice(["", "", " ", "\t"]) + "".join(
            w + self.sep() for w in words[:-1]) + words[-1]
        if rng.random() < 0.2:
            line += self.sep() + rng.choice(COMMENTS)
        if rng.random() < 0.1:
            line += rng.choice([" ", "\t", "\r"])
        rule = None
        if ok and len(words) >= 2:
            rule = dict(who=who, target=target, services=values.get("services", frozenset()),
                        deny=values.get("deny", ()), mark=values.get("mark"),
                        priority=values.get("priority"), strict="strict" in values,
                        plain="plain" in values, filename=FILENAME, line=number)
        return line, rule, ok

    def option(self, key):
        """(word, parsed value, good) for one option."""
        rng = self.rng
        if key in ("strict", "plain"):
            return key, True, True
        if key == "services":
            if self.bad():
                return "services=" + rng.choice(SERVICES_BAD), None, False
            names = [rng.choice(SERVICES_OK) for _ in range(rng.randint(1, 4))]
            return "services=" + ",".join(names), frozenset(names), True
        if key == "deny":
            items = [rng.choice(DENY_OK) for _ in range(rng.randint(1, 4))]
            words = [text for text, _ in items]
            good = True
            if self.bad():
                words.insert(rng.randint(0, len(words)), rng.choice(DENY_BAD))
                good = False
            deny = tuple(DenyItem(*value, text) for text, value in items)
            return "deny=" + ",".join(words), deny, good
        if self.bad():
            return f"{key}={rng.choice(NUMBER_BAD)}", None, False
        text, value = rng.choice(NUMBER_OK)
        return f"{key}={text}", value, True


# -------------------------------------------------------------- mutation --

def mutate_str(rng, text):
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randint(0, len(text))
        if op == 0:                                   # insert special characters
            text = text[:pos] + rng.choice(SPECIAL_CHARS) + text[pos:]
        elif op == 1:                                 # insert a random code point
            ch = chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x7FF),
                                 rng.randint(0x800, 0xFFFF), rng.randint(0x10000, 0x10FFFF)]))
            text = text[:pos] + ch + text[pos:]
        elif op == 2:                                 # delete a range
            text = text[:pos] + text[pos + rng.randint(1, 8):]
        elif op == 3:                                 # replace a character
            if text:
                pos = min(pos, len(text) - 1)
                text = text[:pos] + rng.choice(SPECIAL_CHARS) + text[pos + 1:]
        elif op == 4 or op == 5:                      # duplicate / swap lines
            lines = text.split("\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if op == 4:
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif op == 6:                                 # truncate
            text = text[:pos]
        else:                                         # splice a token into a word
            text = text[:pos] + rng.choice(["=", ",", "#", "@", ":", "*", "strict", "deny=",
                                             "mark=0x", "services=,", " - ", " default "]) + text[pos:]
    return text


def mutate_bytes(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randint(0, len(data))
        if op == 0 and data:                          # flip a bit
            pos = min(pos, len(data) - 1)
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1:                                 # insert special bytes
            data[pos:pos] = rng.choice(SPECIAL_BYTES)
        elif op == 2:                                 # insert a random byte
            data[pos:pos] = bytes([rng.randrange(256)])
        elif op == 3:                                 # delete a range
            del data[pos:pos + rng.randint(1, 8)]
        elif op == 4:                                 # duplicate a line
            lines = bytes(data).split(b"\n")
            i = rng.randrange(len(lines))
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
            data = bytearray(b"\n".join(lines))
        else:                                         # truncate
            del data[pos:]
    return bytes(data)


# ---------------------------------------------------------------- checks --

MESSAGE_KINDS = [
    ("nul", r"NUL character$"),
    ("utf8", r"not valid UTF-8$"),
    ("no-target", r"'.*' has no target: expected 'WHO TARGET \[OPTIONS\]'$"),
    ("who-at", r"'@' needs a group name$"),
    ("who", r"bad user or group '.*': expected USER, @GROUP or \*$"),
    ("target", r"bad target '.*': .* \(or use 'default' or '-'\)$"),
    ("empty-value", r"option '\w+=' has an empty value$"),
    ("no-value", r"option '\w+' takes no value$"),
    ("needs-value", r"option '\w+' needs a value: \w+=\.\.\.$"),
    ("unknown", r"unknown option '.*' \(known: services, deny, mark, priority, (\w+, )*strict, plain\)$"),
    ("twice", r"option '\w+' given twice$"),
    ("services", r"empty name in services= list$"),
    ("deny", r"bad deny= list: .+"),
    ("number", r"(mark|priority)= needs a number, got '.*'$"),
    ("u32", r"(mark|priority)=\S+ is larger than 32 bits$"),
    ("leave-alone", r"target '-' leaves the session alone: option '\w+' makes no sense$"),
    ("default", r"option '\w+' needs a VRF target, not 'default' .*"),
]
MESSAGE_RES = [(kind, re.compile(pattern, re.S)) for kind, pattern in MESSAGE_KINDS]


def message_kind(message):
    for kind, pattern in MESSAGE_RES:
        if pattern.match(message):
            return kind
    raise AssertionError(f"unexpected error message {message!r}")


def run_parse(data):
    """('ok', rules) or ('error', ConfigError); any other exception propagates."""
    try:
        return "ok", policy.parse(data, FILENAME)
    except policy.ConfigError as e:
        return "error", e


def line_count(data):
    return data.count(b"\n" if isinstance(data, bytes) else "\n") + 1


def check_error(e, data):
    assert type(e) is policy.ConfigError
    assert type(e.line) is int and 1 <= e.line <= line_count(data), (e.line, line_count(data))
    assert e.filename == FILENAME
    assert str(e) == f"{FILENAME}:{e.line}: {e.message}"
    assert str(e).startswith(f"{FILENAME}:{e.line}: ")
    assert "\n" not in str(e), "an error message must be one line (syslog)"
    return message_kind(e.message)


def check_rule(rule, data):
    assert type(rule) is policy.Rule
    assert rule.filename == FILENAME
    assert type(rule.line) is int and 1 <= rule.line <= line_count(data)
    # who: '*', a user or @group name: one word, no comment, no NUL, no list/wildcard.
    assert rule.who and not any(c.isspace() for c in rule.who)
    assert "#" not in rule.who and "\x00" not in rule.who
    if rule.who != "*":
        name = rule.who[1:] if rule.who.startswith("@") else rule.who
        assert name and not name.startswith("@")
        assert not set(name) & set("*:,"), rule.who
    # target: default, '-' or a valid device name.
    assert rule.target in ("default", "-") or check_ifname(rule.target) is None, rule.target
    # options.
    assert type(rule.services) is frozenset
    for service in rule.services:
        assert service and "," not in service and "#" not in service
        assert not any(c.isspace() for c in service) and "\x00" not in service
    assert type(rule.deny) is tuple
    for item in rule.deny:
        assert type(item) is DenyItem
        assert item.family in (None, AF_INET, AF_INET6)
        assert item.type is None or 0 <= item.type <= 15
        assert item.protocol is None or 0 <= item.protocol <= 65535
        assert (item.family, item.type, item.protocol) != (None, None, None)
        assert item.text and "," not in item.text
    for number in (rule.mark, rule.priority):
        assert number is None or (type(number) is int and 0 <= number <= U32_MAX)
    assert type(rule.strict) is bool and type(rule.plain) is bool
    if not rule.places:     # default or '-'
        assert not rule.deny and rule.mark is None and rule.priority is None
        assert not rule.plain or rule.exec      # plain there describes the exec= names
    if rule.target == "-":
        assert not rule.strict
    assert rule.places == (rule.target not in ("default", "-"))
    # The normalised options read back to the same rule.
    # (On a second line, so that a name starting with U+FEFF keeps it.)
    again = policy.parse(f"\n{rule.who} {rule.target} {rule.options_text()}", FILENAME)
    assert len(again) == 1
    assert again[0]._replace(line=rule.line) == rule, (again[0], rule)


# The Rule fields the grammar knows; fields of options it never writes must stay empty.
KNOWN_FIELDS = ("who", "target", "services", "deny", "mark", "priority", "strict", "plain",
                "filename", "line")


def known_fields(rule):
    extra = {f: getattr(rule, f) for f in rule._fields if f not in KNOWN_FIELDS}
    assert not any(extra.values()), f"options not written set {extra}"
    return {f: getattr(rule, f) for f in KNOWN_FIELDS}


def split_lines(data):
    return data.split(b"\n" if isinstance(data, bytes) else "\n")


def check_case(data, expected):
    """Check one text; returns ('ok', None) or ('error', message kind)."""
    outcome, result = run_parse(data)
    lines = split_lines(data)
    if outcome == "error":
        kind = check_error(result, data)
        assert expected is None, f"a valid text failed: {result}"
        if kind == "utf8":
            assert isinstance(data, bytes)
            bad = [i for i, raw in enumerate(lines, 1) if not _decodes(raw)]
            assert bad and bad[0] == result.line, (bad[:3], result.line)
        else:
            # The line named is the first bad one: all before it parse, it alone fails alike.
            newline = b"\n" if isinstance(data, bytes) else "\n"
            assert run_parse(newline.join(lines[:result.line - 1]))[0] == "ok"
            alone_outcome, alone = run_parse(_alone(lines, result.line))
            assert alone_outcome == "error" and alone.message == result.message
        return "error", kind

    rules = result
    assert isinstance(rules, tuple)
    last = 0
    for rule in rules:
        check_rule(rule, data)
        assert rule.line > last
        last = rule.line
        words = lines[rule.line - 1]
        if isinstance(words, bytes):
            words = words.decode("utf-8")
        if rule.line == 1:
            words = words.removeprefix("\ufeff")      # a byte-order mark opening the file is dropped
        words = words.split("#", 1)[0].split()
        assert words[:2] == [rule.who, rule.target]
        alone = policy.parse(_alone(lines, rule.line), FILENAME)
        assert len(alone) == 1 and alone[0]._replace(line=rule.line) == rule
    # Every line with words before a '#' is a rule; every other line is not.
    wordy = [i for i, raw in enumerate(lines, 1)
             if (raw.decode("utf-8") if isinstance(raw, bytes) else raw).split("#", 1)[0].split()]
    assert [r.line for r in rules] == wordy
    if expected is not None:
        assert tuple(known_fields(r) for r in rules) == expected, (rules, expected)
    return "ok", None


def _decodes(raw):
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def check_str_bytes_agree(text):
    """parse(str) and parse(str.encode()) give the same answer."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:       # lone surrogates: no UTF-8 form
        return
    a, b = run_parse(text), run_parse(data)
    assert a[0] == b[0]
    if a[0] == "ok":
        assert a[1] == b[1]
    else:
        assert (a[1].line, a[1].message) == (b[1].line, b[1].message)


# ----------------------------------------------------------------- tests --

def _cases(rng):
    """(kind, data, expected) for every generated text, in a fixed order."""
    valid, noisy = Gen(rng, 0.0), Gen(rng, 0.04)
    for _ in range(CASES):
        text, expected = valid.text()
        assert expected is not None
        yield "valid", rng.choice([text, text.encode("utf-8")]), expected
    for _ in range(CASES):
        text, expected = noisy.text()
        yield "noisy", text, expected
    for _ in range(CASES):
        text, _ = rng.choice([valid, noisy]).text()
        yield "mutated-str", mutate_str(rng, text), None
    for _ in range(CASES):
        text, _ = rng.choice([valid, noisy]).text()
        yield "mutated-bytes", mutate_bytes(rng, text.encode("utf-8")), None


def test_fuzz_parse():
    rng = random.Random(SEED)
    print(f"vrf.conf fuzz: seed {SEED} (PAM_VRF_FUZZ_SEED), {CASES} cases per kind")
    stats = {}
    error_kinds = {}
    total = 0
    for index, (kind, data, expected) in enumerate(_cases(rng)):
        total += 1
        try:
            outcome, message_kind_ = check_case(data, expected)
            if isinstance(data, str):
                check_str_bytes_agree(data)
            elif _decodes(data):
                a, b = run_parse(data), run_parse(data.decode("utf-8"))
                assert a[0] == b[0] and (a[1] == b[1] if a[0] == "ok" else
                                         (a[1].line, a[1].message) == (b[1].line, b[1].message))
        except Exception as e:
            pytest.fail(f"seed {SEED} (PAM_VRF_FUZZ_SEED={SEED}), case {index} ({kind}): "
                        f"{type(e).__name__}: {e}\ninput: {data!r}", pytrace=True)
        ok, errors = stats.get(kind, (0, 0))
        stats[kind] = (ok + (outcome == "ok"), errors + (outcome == "error"))
        if outcome == "error":
            error_kinds[message_kind_] = error_kinds.get(message_kind_, 0) + 1

    print(f"seed {SEED}: {total} texts; (ok, error) per kind: {stats}; error kinds: {error_kinds}")
    assert total >= 10000
    context = f"seed {SEED}: {stats} {error_kinds}"
    # Valid grammar texts all parse (checked per case against the expected rules).
    assert stats["valid"] == (CASES, 0), context
    # Noisy and mutated texts give a real mix of successes and errors.
    for kind in ("noisy", "mutated-str", "mutated-bytes"):
        ok, errors = stats[kind]
        assert ok >= CASES * 0.1 and errors >= CASES * 0.1, (kind, context)
    successes = sum(ok for ok, _ in stats.values())
    assert successes >= total * 0.3, context
    # And the errors cover every kind of problem the parser reports.
    assert sorted(error_kinds) == sorted(kind for kind, _ in MESSAGE_KINDS), context


def _alone(lines, number):
    """Line `number` on its own; after a newline unless it is the first line, so
    that a byte-order mark keeps the meaning it has inside the file."""
    line = lines[number - 1]
    if number == 1:
        return line
    return (b"\n" if isinstance(line, bytes) else "\n") + line


@pytest.mark.parametrize("data, outcome, mark", [
    # Inputs that raised ValueError instead of ConfigError before the fix.
    ("a m mark=010", "ok", 10),
    ("a m mark=" + "0" * 5000, "ok", 0),
    ("a m mark=" + "1" * 5000, "u32", None),
    ("a m priority=" + "0" * 4999 + "1", "ok", None),
    # Edge cases.
    ("a m priority=0x" + "f" * 5000, "u32", None),
    ("a m deny=inet:stream:" + "1" * 5000, "deny", None),
    (b"a m\n\xff", "utf8", None),
    ("\x00", "nul", None),
    ("@", "no-target", None),
    ("@ m", "who-at", None),
    ("a m strict=", "no-value", None),
    ("a m =", "unknown", None),
    ("a m ,", "unknown", None),
    ("\ufeffa m", "ok", None),
])
def test_fuzz_regressions(data, outcome, mark):
    """Each input gives the stated outcome, through the same checks as the fuzz loop."""
    got, result = run_parse(data)
    if got == "ok":
        assert outcome == "ok", result
        assert len(result) == 1
        check_rule(result[0], data)
        assert result[0].mark == mark
    else:
        assert check_error(result, data) == outcome, result
