"""pam-vrf-helper as in production: the installed daemon running as a
throwaway non-root user with ambient CAP_BPF/CAP_NET_ADMIN/CAP_DAC_OVERRIDE
only (conftest.Helper), spoken to over its real SOCK_SEQPACKET socket.

    hostile clients   every malformed, oversized, empty, unauthorised or
                      path-walking request gets ok=false with a reason, the
                      reason lands in syslog, and the helper answers a ping
                      within a second afterwards; floods and silent clients
                      never make anyone wait longer than ~1 s
    attach            twice on one cgroup -> one program; VRF / device checks
    link events       a device deleted and re-created (new ifindex) is
                      re-attached, so sockets of a running session bind again
    restart           the kernel keeps the program; attachments.json makes a
                      restarted helper still re-attach a re-created device

Targets are veth devices (`plain`, no VRF driver here) inside a netns the
test creates; the helper and the placed processes run in that netns.
"""

import json
import os
import select
import socket
import subprocess
import textwrap
import time

import pytest

from conftest import PY, run_py, sh, spawn, uid_tag
from pam_vrf import cgroup, client, programs, protocol
from pam_vrf.bpf import cgroup_link

PING_LIMIT = 1.0            # the promise: no client waits longer than this
SLACK = 0.25                # scheduling slack on a busy test host
PLAIN = {"deny": [], "mark": None, "priority": None, "plain": True}


# -- helpers -------------------------------------------------------------------

def exchange(path, data, timeout=5.0):
    """Send `data` as one message on a fresh connection; (reply bytes, seconds).
    b"" as the reply means the helper closed the connection without answering."""
    start = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.send(data)
        raw = s.recv(1 << 17)
    return raw, time.monotonic() - start


def message(**fields):
    return json.dumps({"v": 1, **fields}, separators=(",", ":")).encode()


def hierarchy(path):
    """A cgroup directory as a hierarchy path (what /proc/PID/cgroup shows)."""
    mount = cgroup.mount_point()
    assert path.startswith(mount + "/")
    return path[len(mount):]


def assert_serving(helper):
    """The helper is alive and answers a ping within PING_LIMIT."""
    assert helper.alive(), f"helper died:\n{helper.output()}"
    start = time.monotonic()
    answer = client.call({"op": "ping"}, helper.socket, timeout=PING_LIMIT)
    took = time.monotonic() - start
    assert answer["ok"] is True and answer["version"] == protocol.VERSION
    assert took < PING_LIMIT, took


def check_refusal(helper, syslog, data, expect, peer_pid=None):
    """One hostile request: a clear refusal, its reason in syslog, helper still serving.
    Returns a problem description, or None when all is as it should be."""
    mark = syslog.mark()
    try:
        raw, _ = exchange(helper.socket, data)
    except OSError as e:
        return f"no answer: {e}"
    if not raw:
        return "connection closed without an answer"
    try:
        answer = json.loads(raw)
    except ValueError:
        return f"answer is not JSON: {raw[:200]!r}"
    if answer.get("v") != protocol.VERSION or answer.get("ok") is not False:
        return f"not refused: {answer}"
    error = answer.get("error")
    if not isinstance(error, str) or expect not in error:
        return f"error {error!r} does not say {expect!r}"
    reason = error.removeprefix("malformed request: ")
    needles = ["pam-vrf-helper[", "refused", reason]
    if peer_pid is not None:
        needles.append(f"pid {peer_pid} ")
    try:
        syslog.wait_for(needles, mark, timeout=3)
    except AssertionError as e:
        return f"reason not logged: {e}"
    try:
        assert_serving(helper)
    except (AssertionError, client.HelperError) as e:
        return f"helper not serving afterwards: {e}"
    return None


def run_cases(helper, syslog, cases, peer_pid=None):
    """Check every (label, data, expected error text) case; report all problems at once."""
    problems = []
    for label, data, expect in cases:
        problem = check_refusal(helper, syslog, data, expect, peer_pid)
        if problem:
            problems.append(f"{label}: {problem}")
    assert not problems, "\n".join(problems) + f"\n--- helper output:\n{helper.output()}"
    assert helper.alive()


def veth(ns, name):
    """Create veth `name` (peer `name`p) in netns `ns`; returns its ifindex."""
    sh("ip", "-n", ns, "link", "add", name, "type", "veth", "peer", "name", name + "p")
    return ifindex_in(ns, name)


def ifindex_in(ns, name):
    return json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", name).stdout)[0]["ifindex"]


def vrf_dir(sandbox, name):
    path = f"{sandbox}/vrf/{name}"
    os.makedirs(path, exist_ok=True)
    return path


def subdirs(path):
    return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))


def attached_ifindex(path):
    """(program id, ifindex it binds to) of the one program on `path`."""
    attached = cgroup_link.query(path)
    assert len(attached) == 1, attached
    return attached[0].prog_id, programs.read_back(attached[0].prog_id)[1].ifindex


def wait_for_ifindex(path, ifindex, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        prog_id, bound = attached_ifindex(path)
        if bound == ifindex:
            return prog_id
        assert time.monotonic() < deadline, f"{path} still binds to ifindex {bound}, not {ifindex}"
        time.sleep(0.05)


@pytest.fixture
def conf(vrf_conf):
    return vrf_conf("# nobody may enter a VRF by pam-vrf exec\n")


# -- 1. hostile clients: malformed messages ------------------------------------

def test_malformed_messages_are_refused(helper_factory, conf, syslog, sandbox_cgroup):
    helper = helper_factory(conf, syslog=syslog)
    name = f"pvd{uid_tag()}"
    cg = hierarchy(vrf_dir(sandbox_cgroup, name))

    def attach(**rule):
        return message(op="attach", vrf=name, cgroup=cg, rule={**PLAIN, **rule})

    cases = [
        ("not JSON", b"hello helper", "not JSON"),
        ("truncated JSON", b'{"v":1,"op":"pi', "not JSON"),
        ("invalid UTF-8", b"\xff\xfe\xfd{}", "not JSON"),
        ("invalid UTF-8 inside a string", b'{"v":1,"op":"ping\xc3\x28"}', "not JSON"),
        ("JSON array", b'[1,"ping"]', "not a JSON object"),
        ("JSON string", b'"ping"', "not a JSON object"),
        ("JSON null", b"null", "not a JSON object"),
        ("deeply nested array", b"[" * 4000, "malformed request"),
        ("deeply nested object value", b'{"v":1,"op":"ping","x":' + b"[" * 2000 + b"]" * 2000 + b"}",
         "malformed request"),
        ("missing v", b'{"op":"ping"}', "unsupported protocol version"),
        ("v 2", message(v=2, op="ping"), "unsupported protocol version"),
        ("v as string", b'{"v":"1","op":"ping"}', "unsupported protocol version"),
        ("v true", b'{"v":true,"op":"ping"}', "unsupported protocol version"),
        ("v null", b'{"v":null,"op":"ping"}', "unsupported protocol version"),
        ("missing op", message(), "unknown op None"),
        ("unknown op", message(op="reboot"), "unknown op 'reboot'"),
        ("op as list", message(op=["ping"]), "unknown op"),
        ("attach without vrf", message(op="attach", cgroup=cg, rule=PLAIN), "vrf must be a string"),
        ("attach without cgroup", message(op="attach", vrf=name, rule=PLAIN), "absolute hierarchy path"),
        ("attach without rule", message(op="attach", vrf=name, cgroup=cg), "rule must be an object"),
        ("attach rule as list", message(op="attach", vrf=name, cgroup=cg, rule=[]), "rule must be an object"),
        ("rule with a missing key", message(op="attach", vrf=name, cgroup=cg, rule={"deny": []}),
         "rule must be an object"),
        ("rule with an extra key", attach(exec="x"), "rule must be an object"),
        ("place without vrf", message(op="place"), "vrf must be a string"),
        ("vrf as number", message(op="place", vrf=5), "vrf must be a string"),
        ("pid as string", message(op="place", vrf=name, pid="1"), "pid must be a positive integer"),
        ("pid true", message(op="place", vrf=name, pid=True), "pid must be a positive integer"),
        ("pid null", message(op="place", vrf=name, pid=None), "pid must be a positive integer"),
        ("pid 0", message(op="place", vrf=name, pid=0), "pid must be a positive integer"),
        ("pid negative", message(op="place", vrf=name, pid=-5), "pid must be a positive integer"),
        ("pid float", message(op="place", vrf=name, pid=1.5), "pid must be a positive integer"),
        ("mark -1", attach(mark=-1), "rule.mark must be null or a 32-bit unsigned integer"),
        ("mark 2**40", attach(mark=2 ** 40), "rule.mark must be null or a 32-bit unsigned integer"),
        ("mark as string", attach(mark="1"), "rule.mark must be null or a 32-bit unsigned integer"),
        ("mark true", attach(mark=True), "rule.mark must be null or a 32-bit unsigned integer"),
        ("mark float", attach(mark=1.0), "rule.mark must be null or a 32-bit unsigned integer"),
        ("priority 2**32", attach(priority=2 ** 32), "rule.priority must be null or a 32-bit unsigned integer"),
        ("deny nonsense", attach(deny=["nonsense"]), "bad deny item"),
        ("deny as string", attach(deny="inet"), "rule.deny must be a list"),
        ("deny of numbers", attach(deny=[1]), "rule.deny must be a list"),
        ("deny of 1000 short items", attach(deny=[""] * 1000), "at most 64"),
        ("deny of 1000 items (oversized)", attach(deny=["inet"] * 1000),
         f"larger than {protocol.MAX_MESSAGE} bytes"),
        ("plain as string", attach(plain="yes"), "rule.plain must be true or false"),
        ("oversized 64 KiB", b"x" * 65536, f"larger than {protocol.MAX_MESSAGE} bytes"),
        ("oversized valid JSON", message(op="ping", pad="x" * 5000), f"larger than {protocol.MAX_MESSAGE} bytes"),
        ("one byte over", message(op="ping", pad="x" * (protocol.MAX_MESSAGE + 1 - len(message(op="ping", pad="")))),
         f"larger than {protocol.MAX_MESSAGE} bytes"),
        ("empty message", b"", "malformed request"),
    ]
    run_cases(helper, syslog, cases, peer_pid=os.getpid())
    # Nothing was attached by any of it.
    assert cgroup_link.query(f"{sandbox_cgroup}/vrf/{name}") == []


def test_exactly_max_message_is_read(helper_factory, conf):
    """The limit is the limit: a request of exactly MAX_MESSAGE bytes is served."""
    helper = helper_factory(conf)
    data = message(op="ping", pad="")
    data = message(op="ping", pad="x" * (protocol.MAX_MESSAGE - len(data)))
    assert len(data) == protocol.MAX_MESSAGE
    raw, took = exchange(helper.socket, data)
    assert json.loads(raw) == {"v": 1, "ok": True, "version": protocol.VERSION}
    assert took < PING_LIMIT
    assert helper.alive()


# -- 1. hostile clients: names and paths ---------------------------------------

def test_bad_names_and_cgroup_paths_are_refused(helper_factory, conf, syslog, sandbox_cgroup):
    helper = helper_factory(conf, syslog=syslog)
    name = f"pvd{uid_tag()}"
    real = vrf_dir(sandbox_cgroup, name)
    os.makedirs(f"{sandbox_cgroup}/other/vrf/x")      # a real cgroup for another VRF
    cg = hierarchy(real)
    base = hierarchy(sandbox_cgroup)

    def attach(vrf=name, where=cg):
        return message(op="attach", vrf=vrf, cgroup=where, rule=PLAIN)

    cases = [
        ("vrf ../x", attach(vrf="../x", where=f"{base}/vrf/../x"), "bad VRF name"),
        ("vrf ..", attach(vrf="..", where=f"{base}/vrf/.."), "bad VRF name"),
        ("vrf x/y", attach(vrf="x/y", where=f"{base}/vrf/x/y"), "bad VRF name"),
        ("empty vrf", attach(vrf="", where=f"{base}/vrf/"), "bad VRF name"),
        ("16-char vrf", attach(vrf="a" * 16, where=f"{base}/vrf/{'a' * 16}"), "bad VRF name"),
        ("vrf default", attach(vrf="default", where=f"{base}/vrf/default"), "bad VRF name"),
        ("vrf with NUL", attach(vrf="x\0y", where=f"{base}/vrf/x\0y"), "bad VRF name"),
        ("vrf with space", attach(vrf="x y", where=f"{base}/vrf/x y"), "bad VRF name"),
        ("vrf with newline", attach(vrf="x\ny"), "bad VRF name"),
        ("place into ../x", message(op="place", vrf="../x"), "bad VRF name"),
        ("place into a 16-char vrf", message(op="place", vrf="b" * 16), "bad VRF name"),
        ("cgroup with ..", attach(where=f"/a/../vrf/{name}"), "is not a .../vrf/"),
        ("cgroup walking up out of the sandbox", attach(where=f"{base}/vrf/{name}/../../../vrf/{name}"),
         "is not a .../vrf/"),
        ("cgroup with .", attach(where=f"{base}/./vrf/{name}"), "is not a .../vrf/"),
        ("relative cgroup", attach(where=f"relative/vrf/{name}"), "absolute hierarchy path"),
        ("relative cgroup to the real one", attach(where=cg.lstrip("/")), "absolute hierarchy path"),
        ("empty cgroup", attach(where=""), "absolute hierarchy path"),
        ("cgroup as number", attach(where=5), "absolute hierarchy path"),
        ("cgroup of another vrf", attach(where=f"{base}/other/vrf/x"), "is not a .../vrf/"),
        ("/vrf/x for another vrf", attach(where="/vrf/x"), "is not a .../vrf/"),
        ("cgroup not ending in vrf/NAME", attach(where=base), "is not a .../vrf/"),
        ("cgroup with trailing slash", attach(where=cg + "/"), "is not a .../vrf/"),
        ("cgroup that does not exist", attach(where=f"{base}/missing/vrf/{name}"), "no cgroup"),
        ("cgroup that is a file", attach(vrf="cgroup.procs", where=f"{base}/vrf/cgroup.procs"), "no cgroup"),
        ("cgroup with NUL", attach(where=cg + "\0"), "absolute hierarchy path"),
        ("cgroup with NUL inside", attach(where=f"{base}\0/vrf/{name}"), "absolute hierarchy path"),
    ]
    run_cases(helper, syslog, cases, peer_pid=os.getpid())
    assert cgroup_link.query(real) == []
    assert cgroup_link.query(f"{sandbox_cgroup}/other/vrf/x") == []
    # No request created a directory anywhere.
    assert subdirs(sandbox_cgroup) == ["other", "vrf"]
    assert subdirs(f"{sandbox_cgroup}/vrf") == [name]


# -- 1. hostile clients: non-root peers ----------------------------------------

# Runs as a throwaway user: sends each request (argv[2:], JSON; "pid": "PARENT"
# becomes its parent's pid), then reports the replies, its cgroup and the
# device a new socket is bound to.
PEER = textwrap.dedent("""
    import json, os, socket, sys
    out = {"pid": os.getpid(), "replies": []}
    for text in sys.argv[2:]:
        request = {"v": 1, **json.loads(text)}
        if request.get("pid") == "PARENT":
            request["pid"] = os.getppid()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(5)
            s.connect(sys.argv[1])
            s.send(json.dumps(request).encode())
            raw = s.recv(65536)
        out["replies"].append(json.loads(raw) if raw else None)
    with open("/proc/self/cgroup") as f:
        out["cgroup"] = [l[3:].strip() for l in f if l.startswith("0::")][0]
    s = socket.socket()
    out["bound"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\\0").decode()
    out["ifindex"] = s.getsockopt(socket.SOL_SOCKET, 62)
    print(json.dumps(out))
""")


def test_non_root_peers(helper_factory, vrf_conf, syslog, netns, sandbox_cgroup, throwaway_user):
    ns = netns()
    target = f"pvt{uid_tag()}"
    index = veth(ns, target)
    allowed, stranger = throwaway_user(), throwaway_user()
    conf = vrf_conf(f"{allowed.pw_name}  {target}  plain exec={target}\n"
                    f"*  -\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    base = hierarchy(sandbox_cgroup)
    vrf_dir(sandbox_cgroup, target)

    def ask(user, *requests):
        mark = syslog.mark()
        got = run_py(PEER, netns=ns, cgroup_dir=sandbox_cgroup, user=user,
                     args=(helper.socket, *map(json.dumps, requests)))
        return got, mark

    refusals = [
        ({"op": "attach", "vrf": target, "cgroup": f"{base}/vrf/{target}", "rule": PLAIN},
         "only root may attach"),
        ({"op": "attach-manager", "vrf": target, "uid": 0, "cgroup": "/user.slice/user-0.slice/user@0.service",
          "rule": PLAIN}, "only root may attach programs to a user manager"),
        ({"op": "place", "vrf": target, "pid": 1}, "may only place itself, not pid 1"),
        ({"op": "place", "vrf": target, "pid": "PARENT"}, "may only place itself"),
        ({"op": "place", "vrf": "other0"}, f"may not enter VRF other0: no exec=other0"),
        ({"op": "place", "vrf": "default"}, "may not enter VRF default"),
    ]
    problems = []
    for user in (allowed, stranger):
        for request, expect in refusals:
            got, mark = ask(user, request)
            answer = got["replies"][0]
            label = f"{user.pw_name} {request}"
            if not answer or answer.get("ok") is not False or expect not in answer.get("error", ""):
                problems.append(f"{label}: expected a refusal saying {expect!r}, got {answer}")
                continue
            try:
                syslog.wait_for(["refused", request["op"], f"pid {got['pid']} uid {user.pw_uid}",
                                 answer["error"]], mark, timeout=3)
            except AssertionError as e:
                problems.append(f"{label}: {e}")
            if got["cgroup"] != base or got["bound"] != "":
                problems.append(f"{label}: moved or bound anyway: {got}")
    # The stranger (no exec= at all) may not enter the target either.
    got, mark = ask(stranger, {"op": "place", "vrf": target})
    answer = got["replies"][0]
    if not answer or answer.get("ok") is not False or f"{stranger.pw_name} may not enter VRF {target}" not in answer["error"]:
        problems.append(f"stranger placed into {target}: {answer}")
    elif got["cgroup"] != base or got["bound"] != "":
        problems.append(f"stranger moved or bound anyway: {got}")
    assert not problems, "\n".join(problems) + f"\n--- helper output:\n{helper.output()}"
    assert cgroup_link.query(f"{sandbox_cgroup}/vrf/{target}") == []
    assert subdirs(sandbox_cgroup) == ["vrf"]       # no cgroup made for a refused request
    assert_serving(helper)

    # Positive control: the rule has exec=TARGET, so the user is placed.
    got, mark = ask(allowed, {"op": "place", "vrf": target})
    answer = got["replies"][0]
    placed = f"{cgroup.mount_point()}{base}/{ns}-ns/vrf/{target}"
    assert answer == {"v": 1, "ok": True, "cgroup": placed}, (answer, helper.output())
    assert got["cgroup"].endswith(f"/vrf/{target}")
    assert got["cgroup"] == f"{base}/{ns}-ns/vrf/{target}"
    assert got["bound"] == target and got["ifindex"] == index
    syslog.wait_for([f"placed pid {got['pid']} in VRF {target}", f"uid {allowed.pw_uid}"], mark)
    assert attached_ifindex(placed)[1] == index
    assert_serving(helper)


def test_refused_place_leaves_no_cgroup_behind(helper_factory, vrf_conf, syslog, netns, sandbox_cgroup,
                                               throwaway_user):
    """exec= names a VRF whose device does not exist (yet): the place request is
    refused, and the helper does not leave a VRF cgroup behind for it (the PAM
    path removes its cgroup on failure too; repeated attempts must not litter)."""
    ns = netns()
    ghost = f"pvg{uid_tag()}"
    user = throwaway_user()
    conf = vrf_conf(f"{user.pw_name}  {ghost}  plain exec={ghost}\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    mark = syslog.mark()
    got = run_py(PEER, netns=ns, cgroup_dir=sandbox_cgroup, user=user,
                 args=(helper.socket, json.dumps({"op": "place", "vrf": ghost})))
    answer = got["replies"][0]
    assert answer["ok"] is False and f"no network device '{ghost}'" in answer["error"], answer
    syslog.wait_for(["refused place", f"pid {got['pid']} ", f"no network device '{ghost}'"], mark)
    assert got["cgroup"] == hierarchy(sandbox_cgroup) and got["bound"] == ""
    left = [d for d, _, _ in os.walk(sandbox_cgroup) if d.endswith(f"/vrf/{ghost}")]
    assert left == [], f"refused request left its VRF cgroup behind: {left}"
    assert_serving(helper)


# -- 1. hostile clients: floods and silence ------------------------------------

def test_silent_client_is_dropped_after_a_second(helper_factory, conf):
    helper = helper_factory(conf)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(5)
        start = time.monotonic()
        s.connect(helper.socket)
        raw = s.recv(65536)
        took = time.monotonic() - start
        assert s.recv(65536) == b""           # and the connection is closed
    assert json.loads(raw) == {"v": 1, "ok": False, "error": "request not received in time"}
    assert protocol.TIMEOUT - 0.1 <= took <= protocol.TIMEOUT + SLACK + 0.25, took
    assert_serving(helper)


def timed_ping(path):
    """A fresh client's ping through the production client: (seconds, outcome),
    outcome 'ok' or the error the client reports."""
    start = time.monotonic()
    try:
        answer = client.request({"op": "ping"}, path)
        outcome = "ok" if answer.get("ok") else answer.get("error")
    except client.HelperError as e:
        outcome = str(e)
    return time.monotonic() - start, outcome


# Run as a throwaway user: the production client's pings for argv[2] seconds,
# each as (seconds, outcome) like timed_ping().
PINGER = textwrap.dedent("""
    import json, sys, time
    from pam_vrf import client
    out, end = [], time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            answer = client.request({"op": "ping"}, sys.argv[1])
            outcome = "ok" if answer.get("ok") else answer.get("error")
        except client.HelperError as e:
            outcome = str(e)
        out.append((time.monotonic() - start, outcome))
        time.sleep(0.02)
    print(json.dumps(out))
""")


def bad_pings(pings):
    """Pings that took too long or got neither an answer nor a 'helper busy'."""
    return [(t, o) for t, o in pings if t > PING_LIMIT + SLACK or o not in ("ok", "helper busy")]


BUSY = '{"v":1,"ok":false,"error":"helper busy"}'
LATE = '{"v":1,"ok":false,"error":"request not received in time"}'

# Run as a throwaway user: 500 connections that send nothing (kept open),
# interleaved with 500 that connect and close at once. Prints how many it
# holds; on a line from stdin prints the answers they got; on the next, exits.
BURST = textwrap.dedent("""
    import json, socket, sys, time
    silent, failed = [], 0
    for i in range(500):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.setblocking(False)
        for _ in range(1000):
            try:
                s.connect(sys.argv[1])
                silent.append(s)
                break
            except BlockingIOError:     # backlog full: the burst outruns accept()
                failed += 1
                time.sleep(0.001)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as q:
            q.setblocking(False)
            try:
                q.connect(sys.argv[1])
            except OSError:
                pass
    print(json.dumps({"open": len(silent), "failed": failed}), flush=True)
    sys.stdin.readline()
    answers = {}
    for s in silent:
        try:
            raw = s.recv(65536).decode()
        except OSError as e:
            raw = type(e).__name__
        answers[raw] = answers.get(raw, 0) + 1
    print(json.dumps(answers), flush=True)
    sys.stdin.readline()
""")


def test_flood_of_connections(helper_factory, conf, syslog, throwaway_user):
    helper = helper_factory(conf, syslog=syslog)
    flood_user, other_user = throwaway_user(), throwaway_user()
    mark = syslog.mark()
    burst = spawn([PY, "-c", BURST, helper.socket], user=flood_user, stdin=subprocess.PIPE,
                  stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        pings = []
        # While the burst is under way, and then with all of it open: fresh
        # clients (root, as the PAM hook, and another user) get an answer fast.
        while not select.select([burst.stdout], [], [], 0)[0]:
            pings.append(timed_ping(helper.socket))
        opened = json.loads(burst.stdout.readline())
        opened_at = time.monotonic()
        assert opened["open"] == 500, opened
        for _ in range(3):
            pings.append(timed_ping(helper.socket))
        pings += run_py(PINGER, user=other_user, args=(helper.socket, 0.2))
        assert time.monotonic() - opened_at < protocol.TIMEOUT, "too slow to test 'while open'"
        assert not bad_pings(pings), pings

        # Every silent connection got an answer: busy at once, or dropped after ~1 s.
        time.sleep(max(0.0, opened_at + protocol.TIMEOUT + 0.5 - time.monotonic()))
        burst.stdin.write("\n")
        burst.stdin.flush()
        answers = json.loads(burst.stdout.readline())
        busy, late = answers.pop(BUSY, 0), answers.pop(LATE, 0)
        assert not answers and busy + late == opened["open"], (busy, late, answers)
        assert busy > 0 and late <= 128, (busy, late)
        syslog.wait_for("refusing a connection", mark)

        burst.stdin.write("\n")
        burst.stdin.flush()
        assert burst.wait(5) == 0
    finally:
        burst.kill()
        burst.wait()

    # After closing them all, ping works again (within a second).
    deadline = time.monotonic() + PING_LIMIT
    while True:
        took, outcome = timed_ping(helper.socket)
        if outcome == "ok":
            break
        assert time.monotonic() < deadline, outcome
        time.sleep(0.05)
    assert_serving(helper)


# Run as a throwaway user: keeps ~200 silent connections to the helper open
# for argv[2] seconds, replacing each one the helper answers or drops; then
# prints the answers it got.
FLOODER = textwrap.dedent("""
    import json, select, socket, sys, time
    held, answers, said = [], {}, False
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        done = select.select(held, [], [], 0)[0] if held else []
        for s in done:
            try:
                raw = s.recv(65536).decode()
            except OSError as e:
                raw = type(e).__name__
            answers[raw] = answers.get(raw, 0) + 1
            s.close()
        held = [s for s in held if s not in done]
        while len(held) < 200:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                s.setblocking(False)
                s.connect(sys.argv[1])
            except OSError:
                s.close()
                break
            held.append(s)
        if not said:
            print("flooding", flush=True)
            said = True
        time.sleep(0.005)
    print(json.dumps(answers), flush=True)
""")


@pytest.fixture
def flooder(throwaway_user):
    """flooder(socket, seconds) -> a process of a throwaway user running FLOODER."""
    made = []

    def start(path, seconds):
        proc = spawn([PY, "-c", FLOODER, path, str(seconds)], user=throwaway_user(),
                     stdout=subprocess.PIPE, text=True, cwd="/")
        made.append(proc)
        assert proc.stdout.readline().strip() == "flooding"
        time.sleep(0.1)
        return proc

    yield start
    for proc in made:
        proc.kill()
        proc.wait()


def flood_answers(proc):
    out, _ = proc.communicate(timeout=15)
    return json.loads(out)


def test_held_open_connections_never_delay_a_ping(helper_factory, conf, flooder, throwaway_user):
    """A user keeps the helper busy with silent connections for seconds: a fresh
    client's ping is still answered (ok or 'helper busy') within ~1 s, every time."""
    helper = helper_factory(conf)
    proc = flooder(helper.socket, 3.5)
    pings = run_py(PINGER, user=throwaway_user(), args=(helper.socket, 1.5))
    end = time.monotonic() + 1
    while time.monotonic() < end:
        pings.append(timed_ping(helper.socket))
        time.sleep(0.02)
    assert proc.poll() is None, "the flood ended too early"
    assert len(pings) > 20 and not bad_pings(pings), pings
    # The flood did hit the limit: the flooder was told 'helper busy'.
    answers = flood_answers(proc)
    assert answers.get(BUSY, 0) > 0 and set(answers) <= {BUSY, LATE}, answers
    assert_serving(helper)


def test_unprivileged_flood_cannot_starve_root(helper_factory, conf, flooder, sandbox_cgroup):
    """Logins (root's attach from the PAM hook) must get through while a local user
    floods the helper: a refused attach leaves a non-strict session unplaced, so a
    user could otherwise escape their VRF by flooding while logging in again."""
    helper = helper_factory(conf)
    path = vrf_dir(sandbox_cgroup, "lo")
    request = {"op": "attach", "vrf": "lo", "cgroup": hierarchy(path), "rule": PLAIN}
    proc = flooder(helper.socket, 3)
    outcomes = []
    for _ in range(10):
        start = time.monotonic()
        try:
            answer = client.request(request, helper.socket)
            outcome = "ok" if answer.get("ok") else answer.get("error")
        except client.HelperError as e:
            outcome = str(e)
        outcomes.append((round(time.monotonic() - start, 3), outcome))
        time.sleep(0.1)
    assert proc.poll() is None, "the flood ended too early"
    answers = flood_answers(proc)
    assert answers.get(BUSY, 0) > 0, answers          # the flood did hit the limit
    assert all(o == "ok" and t <= PING_LIMIT for t, o in outcomes), outcomes
    assert len(cgroup_link.query(path)) == 1
    assert_serving(helper)


# -- 2. attach semantics -------------------------------------------------------

def test_attach_twice_one_program_and_device_checks(helper_factory, conf, syslog, netns, sandbox_cgroup):
    ns = netns()
    dev = f"pva{uid_tag()}"
    index = veth(ns, dev)
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    path = vrf_dir(sandbox_cgroup, dev)
    request = {"op": "attach", "vrf": dev, "cgroup": hierarchy(path), "rule": PLAIN}

    mark = syslog.mark()
    first = client.call(request, helper.socket)
    second = client.call(request, helper.socket)
    for answer in (first, second):
        assert answer["ok"] is True and answer["ifindex"] == index and isinstance(answer["prog_id"], int)
    attached = cgroup_link.query(path)
    assert [a.prog_id for a in attached] == [second["prog_id"]], (attached, first, second)
    assert attached[0].flags == 0
    assert programs.read_back(second["prog_id"])[1].ifindex == index
    syslog.wait_for([f"attached program {second['prog_id']} ({dev}, ifindex {index})", path], mark)

    # Another rule for the same cgroup replaces the program, never stacks.
    third = client.call({**request, "rule": {**PLAIN, "mark": 7, "deny": ["inet6"]}}, helper.socket)
    assert third["prog_id"] != second["prog_id"]
    assert [a.prog_id for a in cgroup_link.query(path)] == [third["prog_id"]]
    settings = programs.read_back(third["prog_id"])[1]
    assert settings.ifindex == index and settings.mark == 7 and len(settings.deny) == 1

    # A veth is not a VRF: without `plain` the rule is refused, the program stays.
    mark = syslog.mark()
    answer = client.request({**request, "rule": {**PLAIN, "plain": False}}, helper.socket)
    assert answer["ok"] is False and "not a VRF" in answer["error"] and dev in answer["error"], answer
    syslog.wait_for(["refused attach", "not a VRF"], mark)
    assert [a.prog_id for a in cgroup_link.query(path)] == [third["prog_id"]]

    # A device that does not exist (in the helper's netns) is refused.
    missing = f"pvm{uid_tag()}"
    other = vrf_dir(sandbox_cgroup, missing)
    mark = syslog.mark()
    answer = client.request({"op": "attach", "vrf": missing, "cgroup": hierarchy(other), "rule": PLAIN},
                            helper.socket)
    assert answer["ok"] is False and f"no network device '{missing}'" in answer["error"], answer
    syslog.wait_for(["refused attach", f"no network device '{missing}'"], mark)
    assert cgroup_link.query(other) == []
    assert_serving(helper)


# -- 3./4. link events and restarts --------------------------------------------

# A long-lived process in a VRF cgroup: optionally asks the helper to place it
# (argv[1] = socket, argv[2] = VRF), then for every line on stdin creates an
# AF_INET socket and prints [bound device name, bound ifindex].
PROBE = textwrap.dedent("""
    import json, socket, sys
    if len(sys.argv) > 2:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(5)
            s.connect(sys.argv[1])
            s.send(json.dumps({"v": 1, "op": "place", "vrf": sys.argv[2]}).encode())
            print(s.recv(65536).decode(), flush=True)
    for line in sys.stdin:
        s = socket.socket()
        try:
            dev = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\\0").decode()
        except OSError as e:
            dev = "error: " + e.strerror
        print(json.dumps([dev, s.getsockopt(socket.SOL_SOCKET, 62)]), flush=True)
        s.close()
""")


class Probe:
    def __init__(self, ns, user, cgroup_dir, *args):
        self.proc = spawn([PY, "-c", PROBE, *args], netns=ns, cgroup_dir=cgroup_dir, user=user,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd="/")

    def readline(self, timeout=10):
        ready = select.select([self.proc.stdout], [], [], timeout)[0]
        assert ready, "probe did not answer"
        line = self.proc.stdout.readline()
        assert line, f"probe exited: {self.proc.stderr.read()}"
        return json.loads(line)

    def socket(self):
        """[device, ifindex] a socket created now in the running process is bound to."""
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.readline()

    def close(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def probes():
    made = []
    yield made
    for probe in made:
        probe.close()


def recreate(ns, dev):
    """Delete veth `dev` and create it again under the same name; the new ifindex."""
    old = ifindex_in(ns, dev)
    sh("ip", "-n", ns, "link", "del", dev)
    new = veth(ns, dev)
    assert new != old
    return new


def test_recreated_device_is_reattached(helper_factory, conf, syslog, netns, sandbox_cgroup,
                                        throwaway_user, probes):
    ns = netns()
    dev = f"pvr{uid_tag()}"
    index = veth(ns, dev)
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    path = vrf_dir(sandbox_cgroup, dev)
    answer = client.call({"op": "attach", "vrf": dev, "cgroup": hierarchy(path), "rule": PLAIN},
                         helper.socket)
    assert answer["ifindex"] == index
    probe = Probe(ns, throwaway_user(), path)
    probes.append(probe)
    assert probe.socket() == [dev, index]

    mark = syslog.mark()
    sh("ip", "-n", ns, "link", "del", dev)
    assert probe.socket()[1] == index          # the old, now dangling, ifindex
    new = veth(ns, dev)
    assert new != index

    wait_for_ifindex(path, new)
    syslog.wait_for([f"device {dev} is back as ifindex {new}", "re-attached 1 cgroup"], mark)
    assert probe.socket() == [dev, new]
    assert len(cgroup_link.query(path)) == 1

    # Again, to be sure it is not a one-off.
    mark = syslog.mark()
    newer = recreate(ns, dev)
    wait_for_ifindex(path, newer)
    syslog.wait_for([f"device {dev} is back as ifindex {newer}", "re-attached 1 cgroup"], mark)
    assert probe.socket() == [dev, newer]
    # The peer end (no cgroup of its own) and link up/down changes re-attach nothing.
    mark = syslog.mark()
    sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", ns, "link", "set", dev, "down")
    assert_serving(helper)
    time.sleep(0.2)
    assert not [l for l in syslog.since(mark) if "re-attached" in l]
    assert probe.socket() == [dev, newer]
    assert helper.alive()


def test_restarted_helper_still_reattaches(helper_factory, vrf_conf, syslog, netns, sandbox_cgroup,
                                           throwaway_user, probes):
    ns = netns()
    dev = f"pvs{uid_tag()}"
    index = veth(ns, dev)
    user = throwaway_user()
    conf = vrf_conf(f"{user.pw_name}  {dev}  plain exec={dev}\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)

    # The process asks the helper to place it (pam-vrf exec), then waits.
    probe = Probe(ns, user, sandbox_cgroup, helper.socket, dev)
    probes.append(probe)
    placed = probe.readline()
    path = f"{cgroup.mount_point()}{hierarchy(sandbox_cgroup)}/{ns}-ns/vrf/{dev}"
    assert placed == {"v": 1, "ok": True, "cgroup": path}, (placed, helper.output())
    assert probe.proc.pid in cgroup.members(path)
    assert probe.socket() == [dev, index]
    # The state file is written within Attachments.FLUSH_DELAY (0.5 s) of a change.
    state = os.path.join(helper.workdir, "attachments.json")
    deadline = time.monotonic() + 5
    while not os.path.exists(state) and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(state) as f:
        assert list(json.load(f)) == [path]

    helper.stop()
    assert not helper.alive()
    # The kernel keeps the program without the helper.
    assert probe.socket() == [dev, index]
    assert attached_ifindex(path)[1] == index

    mark = syslog.mark()
    helper.start()
    syslog.wait_for(["serving", "1 remembered attachments"], mark)
    assert probe.socket() == [dev, index]

    new = recreate(ns, dev)
    wait_for_ifindex(path, new)
    syslog.wait_for([f"device {dev} is back as ifindex {new}", "re-attached 1 cgroup"], mark)
    assert probe.socket() == [dev, new]
    assert probe.proc.poll() is None
    assert_serving(helper)


def test_attach_manager_binds_a_user_manager_cgroup_and_refuses_anything_else(
        helper_factory, conf, syslog, netns, sandbox_cgroup):
    """What logind makes, rebuilt in the sandbox: user-UID.slice/user@UID.service
    beside session-N.scope. The helper binds the manager's cgroup for root only."""
    ns = netns()
    dev = f"pvu{uid_tag()}"
    index = veth(ns, dev)
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    uid = 4242
    slice_dir = f"{sandbox_cgroup}/user-{uid}.slice"
    manager = f"{slice_dir}/user@{uid}.service"
    os.makedirs(f"{manager}/app.slice")
    os.makedirs(f"{slice_dir}/session-7.scope")
    request = {"op": "attach-manager", "cgroup": hierarchy(manager), "uid": uid, "vrf": dev, "rule": PLAIN}

    answer = client.call(request, helper.socket)
    assert answer["ifindex"] == index
    assert [a.prog_id for a in cgroup_link.query(manager)] == [answer["prog_id"]]
    # What the manager starts below it inherits the binding.
    assert cgroup_link.effective(f"{manager}/app.slice") == [answer["prog_id"]]
    assert cgroup.user_manager_of(hierarchy(f"{slice_dir}/session-7.scope/vrf/{dev}"), uid) == hierarchy(manager)

    run_cases(helper, syslog, [
        ("wrong uid", message(**{**request, "uid": uid + 1}), "is not the systemd manager cgroup of uid"),
        ("session scope", message(**{**request, "cgroup": hierarchy(f"{slice_dir}/session-7.scope")}),
         "is not the systemd manager cgroup"),
        ("walk up", message(**{**request, "cgroup": hierarchy(manager) + f"/../../user-{uid}.slice/user@{uid}.service"}),
         "is not the systemd manager cgroup"),
        ("uid as text", message(**{**request, "uid": str(uid)}), "uid must be a non-negative integer"),
        ("missing", message(**{**request, "cgroup": f"/nowhere/user-{uid}.slice/user@{uid}.service"}), "no cgroup"),
    ])
    assert_serving(helper)
