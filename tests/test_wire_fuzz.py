"""pam_vrf.so's side of the wire (pam_module/pam_vrf.c), fuzzed.

The reply parser runs inside su and sudo, on whatever comes back on
root.sock. The test builds it and the request encoder on their own
(tests/fuzz_wire.c) under AddressSanitizer and UndefinedBehaviorSanitizer,
feeds the parser a fixed corpus and some 20 000 inputs mutated from it with a
fixed seed (bounded and repeatable: a few seconds), and checks every answer
against Python's json module: what the parser accepts and the fields it
reads must be what a JSON parser reads, and nothing else may pass (nesting,
duplicate keys, lone surrogates, NUL, non-UTF-8). The encoder gets names of
every kind and length up to and beyond the message limit: what it sends must
decode to exactly the user and service, and what the helper would refuse is
not sent. Needs no root.

Coverage-guided exploration: see the libFuzzer line in tests/fuzz_wire.c.
"""

import json
import os
import random
import shutil
import struct
import subprocess
import tempfile

import pytest

from pam_vrf import policy, protocol

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.path.join(HERE, "fuzz_wire.c")
MAX_MESSAGE = protocol.MAX_MESSAGE      # the module hands the parser at most this much
SEED, MUTANTS = 16, 20000
LONG_MAX, LONG_MIN = 2**63 - 1, -2**63
FIELDS = ("verdict", "vrf", "rule", "error")     # the strings the module reads

CORPUS = [
    # what the helper sends (protocol.reply / placement.verdict)
    b'{"v":2,"ok":true,"verdict":"placed","vrf":"mgmt","rule":"/etc/security/vrf.conf:3",'
    b'"cgroup":"/sys/fs/cgroup/vrf/mgmt"}',
    b'{"v":2,"ok":true,"verdict":"alone"}',
    b'{"v":2,"ok":true,"verdict":"unplaced","error":"no such device \\"x\\"\\n","rule":"f:1"}',
    b'{"v":2,"ok":false,"error":"no \\u00e9\\ud83d\\ude00\\u001b"}',
    b'{"v":2,"ok":true,"version":2}',
    # edges of the grammar
    b'  {  "v" : 2 ,\t"ok"\n:\rtrue , "verdict" : null , "x" : -0 , "y" : false , "z" : "" }  ',
    b'{}', b'{"v":-1}', b'{"v":9223372036854775807}', b'{"v":9223372036854775808}', b'{"v":-99999999999999999999}',
    b'{"\\u0076":2,"\\u006fk":true}', b'{"v":2,"error":"\\/\\b\\f\\n\\r\\t\\\\\\""}',
    b'{"v":2,"vrf":"\\ud800\\udc00\\udbff\\udfff"}', b'{"v":2,"vrf":"\xf4\x8f\xbf\xbf\xef\xbf\xbd"}',
    # what must not pass
    b'[{"v":2}]', b'{"v":2,"x":[1]}', b'{"v":2,"x":{}}', b'{"v":2,"verdict":"a","verdict":"b"}',
    b'{"v":2,"verdict":"\\udc00"}', b'{"v":2,"verdict":"\\ud800x"}', b'{"v":2,"verdict":"\\u0000"}',
    b'{"v":2,"verdict":"a\x00"}', b'{"v":2}\x00', b'{"v":2,"verdict":"\xc0\xaf"}', b'{"v":2,"e":"\xed\xa0\x80"}',
    b'{"v":2.0}', b'{"v":1e2}', b'{"v":02}', b'{"v":-}', b'{"v":+2}', b'{"v":2,}', b'{,}', b'{"v"}',
    b'{"v":2} {}', b'{"v":tru}', b'{"v":NaN}', b'{"v":"2"}', b'{"ok":1}', b'{"verdict":2}', b'{"v":2',
    b'"x"', b'', b'\xef\xbb\xbf{}', b'{"a":"\\u12"}', b'{"a":"\\x41"}', b'{"a":"\\',
    b'{"v":2,"pad":"' + b"x" * 4000 + b'"}',
]

TOKENS = [b'{', b'}', b'[', b']', b',', b':', b'"', b'\\', b'\\u', b'\\ud83d', b'\\ude00', b'\\u0000', b'true',
          b'false', b'null', b'-', b'0', b'1', b'9223372036854775808', b'1e5', b'.5', b' ', b'\t', b'\n', b'\x00',
          b'\x1f', b'\x7f', b'\xc3', b'\xa9', b'\xf0\x9f\x98\x80', b'\xff', b'"v"', b'"ok"', b'"verdict"', b'"vrf"',
          b'"rule"', b'"error"']


def mutants(rng, corpus, count):
    """Byte-level mutations (flip, insert a token, delete, duplicate, splice)."""
    for _ in range(count):
        data = bytearray(rng.choice(corpus))
        for _ in range(rng.randint(1, 4)):
            at = rng.randint(0, len(data))
            op = rng.randrange(5)
            if op == 0 and data:
                data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[at:at] = rng.choice(TOKENS)
            elif op == 2:
                del data[at:at + rng.randint(1, 8)]
            elif op == 3:
                data[at:at] = data[max(0, at - 16):at]
            else:
                other = rng.choice(corpus)
                data[at:] = other[rng.randint(0, len(other)):]
        yield bytes(data[:MAX_MESSAGE])


def flat_objects(rng, count):
    """Valid flat objects with random keys and scalars, as the json module writes them."""
    keys = ["v", "ok", *FIELDS, "cgroup", "x", ""]
    values = [lambda: rng.randint(-5, 5), lambda: rng.choice([True, False, None]), lambda: 2**rng.randint(0, 70),
              lambda: "".join(rng.choice("ab\"\\\n\x01\x7f\u00e9\u2028\U0001f600") for _ in range(rng.randint(0, 6)))]
    for _ in range(count):
        obj = {rng.choice(keys): rng.choice(values)() for _ in range(rng.randint(0, 6))}
        yield json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode()


class _Object(list):
    """A JSON object as its (key, value) pairs: duplicates kept."""


def expected(data):
    """What parse_reply must answer, derived from the json module."""
    try:
        text = data.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_Object, parse_float=lambda s: float,
                           parse_constant=lambda s: float)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "reject"
    if not isinstance(value, _Object):
        return "reject"
    got = {"v": LONG_MIN - 1, "ok": False, **{name: None for name in FIELDS}}
    seen = set()
    for key, val in value:
        strings = [key] + ([val] if type(val) is str else [])
        if any("\0" in s or not s.isascii() and _not_utf8(s) for s in strings):
            return "reject"                 # the parser never yields a NUL or a lone surrogate
        if val is float or type(val) in (_Object, list):
            return "reject"                 # only flat objects of strings, integers, true/false/null
        if key in got:
            if key in seen:
                return "reject"             # twice: which one counts?
            seen.add(key)
        if key == "v" and type(val) is int:
            got["v"] = max(LONG_MIN, min(LONG_MAX, val))    # strtol
        elif key == "ok" and type(val) is not bool:
            return "reject"
        elif key == "ok":
            got["ok"] = val
        elif key in FIELDS and val is not None and type(val) is not str:
            return "reject"
        elif key in FIELDS:
            got[key] = val
    version = -1 if got["v"] == LONG_MIN - 1 else got["v"]
    return f"accept v={version} ok={int(got['ok'])}" + "".join(
        f" {name}={'-' if got[name] is None else got[name].encode().hex()}" for name in FIELDS)


def _not_utf8(s):
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


@pytest.fixture(scope="module")
def harness():
    cc = shutil.which("gcc") or shutil.which("clang")
    assert cc, "no C compiler"
    where = tempfile.mkdtemp(prefix="pam-vrf-fuzz-")
    binary = os.path.join(where, "fuzz_wire")
    build = subprocess.run([cc, "-g", "-O1", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
                            "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-o", binary, HARNESS, "-lpam"],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    yield binary
    shutil.rmtree(where, ignore_errors=True)


def run(harness, inputs, mode="reply"):
    """One line of the harness's per input (a record, or a tuple of records)."""
    records = [data for item in inputs for data in (item if isinstance(item, tuple) else (item,))]
    stream = b"".join(struct.pack("<I", len(data)) + data for data in records)
    env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=99", "UBSAN_OPTIONS": "print_stacktrace=1"}
    proc = subprocess.run([harness, mode], input=stream, capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == len(inputs)
    return lines


def test_the_corpus_parses_as_json_says(harness):
    answers = run(harness, CORPUS)
    for data, answer in zip(CORPUS, answers):
        assert answer == expected(data), data
    assert answers[0] == expected(CORPUS[0]) and answers[0].startswith("accept v=2 ok=1 verdict=" + b"placed".hex())
    assert sum(a == "reject" for a in answers) >= 30, answers      # the corpus's hostile half


def test_mutated_and_random_replies_are_parsed_as_json_says_under_sanitizers(harness):
    rng = random.Random(SEED)
    inputs = list(mutants(rng, CORPUS, MUTANTS)) + list(flat_objects(rng, 2000))
    answers = run(harness, inputs)
    wrong = [(data, answer, expected(data)) for data, answer in zip(inputs, answers) if answer != expected(data)]
    assert not wrong, wrong[:5]
    # not a run of rejections only: the mutants reach every branch of the grammar
    accepted = sum(a.startswith("accept") for a in answers)
    assert accepted > 1000, accepted


def names(rng, count):
    """User and service names (no NUL: PAM items are C strings) of every kind
    and length, near the character and message limits too."""
    pieces = ["a", "-", '"', "\\", "\x01", "\x1b", "\x7f", "\u00e9", "\u2028", "\U0001f600"]
    for _ in range(count):
        n = rng.choice([0, 1, 5, policy.MAX_NAME - 1, policy.MAX_NAME, policy.MAX_NAME + 1,
                        rng.randint(0, 700), rng.randint(600, 900)])
        text = "".join(rng.choice(pieces) for _ in range(n)).encode()
        if rng.random() < 0.1 and text:          # not UTF-8
            at = rng.randrange(len(text))
            text = text[:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"]) + text[at + 1:]
        yield text


def request_sent(user, service, answer):
    """Check one encoder answer; True if the request was sent."""
    try:
        u, s = user.decode(), service.decode()
    except UnicodeDecodeError:
        assert answer == "refused", (user, service, answer)       # not UTF-8: never sent
        return False
    if len(u) > policy.MAX_NAME:
        assert answer == "refused", (user, answer)                 # the helper would refuse it
        return False
    fields = {"v": protocol.VERSION, "op": "open", "user": u, **({"service": s} if s else {})}
    # its length as the module escapes (\u00XX for every control character and DEL)
    size = len(json.dumps(dict(fields, user="", **({"service": ""} if s else {})), separators=(",", ":"))) + sum(
        2 if c in '"\\' else 6 if ord(c) < 0x20 or c == "\x7f" else len(c.encode()) for c in u + s)
    if answer == "refused":
        assert size > MAX_MESSAGE - 8, (user, service)            # refused only near the limit
        return False
    request = bytes.fromhex(answer)
    assert len(request) == size <= MAX_MESSAGE and json.loads(request) == fields, (user, service, request)
    assert not any(b < 0x20 or b == 0x7f for b in request), request     # escaped, never raw
    return True


def test_requests_carry_exactly_user_and_service_within_the_limits(harness):
    rng = random.Random(SEED)
    pairs = [(u, s) for u, s in zip(names(rng, 3000), names(rng, 3000))]
    pairs += [(b"\x01" * policy.MAX_NAME, b"\x1b" * n) for n in range(380, 460)]     # across MAX_MESSAGE
    answers = run(harness, pairs, "request")
    sent = [request_sent(u, s, a) for (u, s), a in zip(pairs, answers)]
    assert 1000 < sum(sent) < len(sent), sum(sent)
    assert True in sent[-80:] and False in sent[-80:]
