"""jsonlite against the json module: same values, ValueError for the rest."""

import json
import random

import pytest

from pam_vrf import jsonlite

SAMPLES = [
    {"v": 1, "op": "attach", "cgroup": "/a b/vrf/mgmt", "vrf": "mgmt",
     "rule": {"deny": ["inet6", "inet:dgram:udp"], "mark": 4294967295, "priority": None, "plain": False}},
    {"v": 1, "ok": False, "error": 'quote " backslash \\ tab \t nl \n ctl \x01 é ✓ 😀'},
    [], {}, [[[]]], "", 0, -7, True, None, "\ud800",
]


@pytest.mark.parametrize("value", SAMPLES)
def test_round_trip_and_agreement(value):
    text = jsonlite.dumps(value)
    assert json.loads(text) == value
    assert jsonlite.loads(text) == value
    assert jsonlite.loads(json.dumps(value)) == value
    assert jsonlite.loads(json.dumps(value, indent=2, ensure_ascii=False)) == value


def _random_text(rng):
    alphabet = '{}[]",:0123456789-+.eEtrufalsn \\/u\n\t\x00abcé"'
    valid = json.dumps(_random_value(rng, 3), ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.3:
        return valid
    chars = list(valid)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        pos = rng.randint(0, len(chars))
        if op < 0.4:
            chars.insert(pos, rng.choice(alphabet))
        elif op < 0.7 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif chars:
            chars[min(pos, len(chars) - 1)] = rng.choice(alphabet)
    return "".join(chars)


def _random_value(rng, depth):
    kind = rng.randrange(7 if depth else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-2 ** 40, 2 ** 40)
    if kind == 2:
        return "".join(rng.choice('ab"\\\n\x01é😀 /') for _ in range(rng.randint(0, 6)))
    if kind == 3:
        return rng.choice([0, 1, -1, 10])
    if kind in (4, 5):
        return [_random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}": _random_value(rng, depth - 1) for i in range(rng.randint(0, 3))}


def test_fuzz_agrees_with_json_or_raises_value_error():
    rng = random.Random(4242)
    accepted = 0
    for _ in range(20000):
        text = _random_text(rng)
        try:
            expected = json.loads(text)
        except ValueError:
            expected = ValueError
        try:
            got = jsonlite.loads(text)
        except ValueError:
            got = ValueError
        if expected is ValueError or isinstance(expected, float) or got is ValueError:
            # jsonlite reads a subset (no NaN/Infinity, bounded depth and number length):
            # it may refuse what json accepts, never the other way round.
            assert not (got is not ValueError and expected is ValueError), text
            continue
        assert got == expected, text
        accepted += 1
    assert accepted > 5000


def test_refusals():
    for text in ["", "[", "{", '{"a"}', '{"a":}', "[1,]", "01", "1.", ".5", "+1", "NaN", "Infinity",
                 '"\\x"', '"\\u12"', '"a', "tru", "[" * 40 + "]" * 40, "1" * 30, '"\x01"', "{} x"]:
        with pytest.raises(ValueError):
            jsonlite.loads(text)
    with pytest.raises(ValueError):
        jsonlite.dumps({1: 2})
    with pytest.raises(ValueError):
        jsonlite.dumps(1.5)
