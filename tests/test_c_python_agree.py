"""What the C module (pam_module/pam_vrf.c) and the Python side each write
down for themselves must agree: the protocol's constants, the decider's
verdict lines, the verdict names, and the module arguments pam_vrf(8)
documents. Read from the C source, so no build and no root is needed.
"""

import os
import re

from pam_vrf import netdev, offline, policy, protocol

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = open(os.path.join(REPO, "pam_module", "pam_vrf.c")).read()
MAN = open(os.path.join(REPO, "doc", "pam_vrf.8")).read()


def define(name):
    """The value of `#define NAME value` in the C source, as Python sees it."""
    found = re.findall(rf"^#define {name}\s+(.+?)\s*(?:/\*.*)?$", SOURCE, re.M)
    assert len(found) == 1, (name, found)
    value = found[0]
    if value.startswith('"'):
        return value[1:-1].encode().decode("unicode_escape")
    return int(value)


def test_protocol_constants_agree():
    assert define("PROTOCOL_VERSION") == protocol.VERSION
    assert define("DEFAULT_SOCKET") == protocol.DEFAULT_SOCKET
    assert define("ROOT_SOCKET") == protocol.ROOT_SOCKET_NAME
    assert define("LOGIN_TIMEOUT") == protocol.LOGIN_TIMEOUT
    assert define("MAX_MESSAGE") == protocol.MAX_MESSAGE
    assert define("DEFAULT_CONFIG") == policy.DEFAULT_CONFIG
    # Both count characters: a name the helper takes is never refused by the module.
    assert define("MAX_NAME") == policy.MAX_NAME
    # The kernel counts bytes, NUL included; PAM_VRF carries what it accepts.
    assert define("IFNAMSIZ_MAX") == netdev.IFNAMSIZ - 1


def test_the_decider_speaks_the_lines_the_module_reads():
    assert define("VERDICT_PROCEED").encode() == offline.VERDICT[offline.PROCEED]
    assert define("VERDICT_REFUSE").encode() == offline.VERDICT[offline.REFUSE]


def test_the_module_knows_every_verdict_the_helper_sends():
    known = set(re.findall(r'!strcmp\(verdict, "([a-z]+)"\)', SOURCE))
    assert known == set(protocol.VERDICTS), known


def _module_arguments():
    body = SOURCE[SOURCE.index("static struct options parse_args("):]
    body = body[:body.index("\n}\n")]
    return {word for word in re.findall(r'str(?:n)?cmp\(argv\[i\], "([^"]+)"', body)}


def test_pam_vrf_8_documents_exactly_the_arguments_the_module_reads():
    assert _module_arguments() == {"debug", "config=", "socket="}
    synopsis = MAN[MAN.index(".SH SYNOPSIS"):MAN.index(".SH DESCRIPTION")]
    options = MAN[MAN.index(".SH OPTIONS"):]
    options = options[:options.index("\n.SH ", 1)]
    in_synopsis = set(re.findall(r"^\.RB \[ ([a-z]+=?)", synopsis, re.M))
    in_options = set(re.findall(r"^\.TP\n\.BI? ([a-z]+=?)", options, re.M))
    assert in_synopsis == in_options == _module_arguments(), (in_synopsis, in_options)
    # the usage line at the top of the source says the same
    usage = re.search(r"pam_vrf\.so (\[.*\])\n", SOURCE).group(1)
    assert set(re.findall(r"\[([a-z]+=?)", usage)) == _module_arguments(), usage
