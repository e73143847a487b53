"""JSON for the helper protocol without importing the json module.

`import json` pulls in `re` and costs about 4 ms, a fifth of a whole login
through pam_python; the login path needs only to write one small request
and read one small reply. This module writes and reads standard JSON
(objects, arrays, strings, integers, true/false/null; floats are read
but never written) and raises ValueError on anything else. The helper
and the PAM side share it; tests check it against the json module.
"""

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_UNESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_MAX_DEPTH = 32


def dumps(obj):
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return str(int(obj))
    if isinstance(obj, str):
        if obj.isascii() and obj.isprintable() and '"' not in obj and "\\" not in obj:
            return '"' + obj + '"'          # nothing to escape: names, paths, verdicts
        return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or 0xD800 <= ord(c) < 0xE000
                                                  else c) for c in obj) + '"'
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise ValueError("object keys must be strings")
        return "{" + ",".join(dumps(k) + ":" + dumps(v) for k, v in obj.items()) + "}"
    raise ValueError(f"cannot write {type(obj).__name__} as JSON")


def loads(text):
    value, at = _value(text, _skip(text, 0), 0)
    if _skip(text, at) != len(text):
        raise ValueError(f"extra data at {at}")
    return value


def _skip(text, at):
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at


def _value(text, at, depth):
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    if at >= len(text):
        raise ValueError("unexpected end")
    c = text[at]
    if c == "{":
        return _object(text, at + 1, depth)
    if c == "[":
        return _array(text, at + 1, depth)
    if c == '"':
        return _string(text, at + 1)
    for word, value in (("true", True), ("false", False), ("null", None)):
        if text.startswith(word, at):
            return value, at + len(word)
    return _number(text, at)


def _object(text, at, depth):
    out = {}
    at = _skip(text, at)
    if text[at:at + 1] == "}":
        return out, at + 1
    while True:
        if text[at:at + 1] != '"':
            raise ValueError(f"expected a key at {at}")
        key, at = _string(text, at + 1)
        at = _skip(text, at)
        if text[at:at + 1] != ":":
            raise ValueError(f"expected ':' at {at}")
        out[key], at = _value(text, _skip(text, at + 1), depth + 1)
        done, at = _after_item(text, at, "}")
        if done:
            return out, at


def _array(text, at, depth):
    out = []
    at = _skip(text, at)
    if text[at:at + 1] == "]":
        return out, at + 1
    while True:
        value, at = _value(text, at, depth + 1)
        out.append(value)
        done, at = _after_item(text, at, "]")
        if done:
            return out, at


def _after_item(text, at, close):
    """After a member or element: (True, index past `close`) at the end,
    else (False, index of the next one)."""
    at = _skip(text, at)
    if text[at:at + 1] == close:
        return True, at + 1
    if text[at:at + 1] != ",":
        raise ValueError(f"expected ',' or '{close}' at {at}")
    return False, _skip(text, at + 1)


def _string(text, at):
    end = text.find('"', at)
    if end >= 0:
        plain = text[at:end]            # no escapes, no control characters: the usual string
        if "\\" not in plain and (plain.isprintable() or not any(c < " " for c in plain)):
            return plain, end + 1
    out = []
    while True:
        end = at
        while end < len(text) and text[end] not in '"\\':
            if text[end] < " ":
                raise ValueError(f"control character in string at {end}")
            end += 1
        out.append(text[at:end])
        if end >= len(text):
            raise ValueError("unterminated string")
        if text[end] == '"':
            return "".join(out), end + 1
        escape = text[end + 1:end + 2]
        if escape == "u":
            code = _hex4(text, end + 2)
            at = end + 6
            if 0xD800 <= code < 0xDC00 and text[at:at + 2] == "\\u":
                low = _hex4(text, at + 2)
                if 0xDC00 <= low < 0xE000:
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    at += 6
            out.append(chr(code))
        elif escape in _UNESCAPES:
            out.append(_UNESCAPES[escape])
            at = end + 2
        else:
            raise ValueError(f"bad escape at {end}")


def _hex4(text, at):
    digits = text[at:at + 4]
    if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError(f"bad \\u escape at {at}")
    return int(digits, 16)


def _number(text, at):
    end = at
    while end < len(text) and text[end] in "+-0123456789.eE":
        end += 1
    word = text[at:end]
    if not _is_json_number(word):
        raise ValueError(f"bad number {word or text[at]!r} at {at}")
    mantissa = word[1:] if word.startswith("-") else word
    if mantissa.isdigit():
        if len(mantissa) > 20:
            raise ValueError(f"number too long at {at}")
        return int(word), end
    return float(word), end


def _is_json_number(word):
    """-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, without importing re."""
    if word.startswith("-"):
        word = word[1:]
    head, e, exponent = word.replace("E", "e").partition("e")
    whole, dot, fraction = head.partition(".")
    if not whole.isdigit() or not whole.isascii() or (len(whole) > 1 and whole[0] == "0"):
        return False
    if dot and not (fraction.isdigit() and fraction.isascii()):
        return False
    if e:
        digits = exponent[1:] if exponent[:1] in ("+", "-") else exponent
        if not (digits.isdigit() and digits.isascii()):
            return False
    return True
