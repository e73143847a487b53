"""From tests/helper_attacks.py (AGENT).
"""

import array, errno, json, os, select, socket, struct, sys, time

conns, counter = {}, [0]


def keep(sock):
    counter[0] += 1
    conns[counter[0]] = sock
    return counter[0]


def pidfds(spec):
    """Descriptors to send: 'self', 'none', 'devnull', a pid, or a list of those."""
    if spec in (None, "none"):
        return []
    if spec == "self":
        return [os.pidfd_open(os.getpid())]
    if spec == "devnull":
        return [os.open("/dev/null", os.O_RDONLY)]
    if isinstance(spec, int):
        return [os.pidfd_open(spec)]
    return [fd for item in spec for fd in pidfds(item)]


def connect(path, blocking=True):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if blocking:
        s.settimeout(60)
        s.connect(path)
    else:
        s.setblocking(False)
        s.connect(path)
    return s


def parse(raw):
    try:
        return json.loads(raw)
    except ValueError:
        return None


def op_exchange(c):
    """One request on a fresh (or a kept) connection, with chosen ancillary data."""
    try:
        s = conns.pop(c["conn"]) if "conn" in c else connect(c["socket"])
    except OSError as e:
        return {"connect_error": errno.errorcode[e.errno]}
    with s:
        if "raw" in c:
            data = c["raw"].encode("latin-1")
        else:
            data = json.dumps({"v": 2, **c["msg"]}).encode()
        fds = pidfds(c.get("pidfd", "self"))
        anc = []
        if fds:
            anc.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes()))
        if c.get("creds"):
            anc.append((socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("3i", *c["creds"])))
        try:
            s.sendmsg([data], anc)
        except OSError as e:
            # A connection the helper refuses at accept (root.sock for
            # non-root) is answered and closed at once: the answer may
            # already wait when our send meets the closed end.
            # Both are reported: the kernel's refusal of the send, and
            # the helper's answer if one was waiting.
            try:
                raw = s.recv(1 << 17, socket.MSG_DONTWAIT)
            except OSError:
                raw = b""
            if not raw:
                return {"send_error": errno.errorcode[e.errno]}
            return {"send_error": errno.errorcode[e.errno], "raw": raw.decode("utf-8", "replace"),
                    "reply": parse(raw)}
        else:
            try:
                raw = s.recv(1 << 17)
            except OSError as e:
                return {"recv_error": errno.errorcode[e.errno]}
        finally:
            for fd in fds:
                os.close(fd)
    text = raw.decode("utf-8", "replace")
    return {"raw": text, "reply": parse(raw) if raw else None}


def op_client(c):
    """The product's own client (pidfd and all), timed."""
    from pam_vrf import client
    start = time.monotonic()
    try:
        reply = client.request(c["msg"], c["socket"], c.get("timeout", 10))
    except client.HelperError as e:
        reply = {"client_error": str(e)}
    return {"reply": reply, "took": time.monotonic() - start}


def op_until_busy(c):
    """Pings on fresh connections, one after another, until 'helper busy'."""
    from pam_vrf import client
    outcomes = {}
    for i in range(c["limit"]):
        try:
            answer = client.request({"op": "ping"}, c["socket"], 10)
            outcome = "ok" if answer.get("ok") else answer.get("error")
        except client.HelperError as e:
            outcome = str(e)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "helper busy":
            break
    return {"outcomes": outcomes, "requests": i + 1}


def op_hold(c):
    """Open `n` silent connections as fast as possible and keep them."""
    ids, errors = [], {}
    for _ in range(c["n"]):
        try:
            ids.append(keep(connect(c["socket"], blocking=False)))
        except OSError as e:
            name = errno.errorcode[e.errno]
            errors[name] = errors.get(name, 0) + 1
    return {"held": ids, "errors": errors}


def op_answers(c):
    """Wait until every kept connection is answered or closed; count the answers."""
    left = {conns[i]: i for i in c.get("ids", list(conns))}
    counts, deadline = {}, time.monotonic() + c.get("timeout", 30)
    while left and time.monotonic() < deadline:
        for s in select.select(list(left), [], [], 0.5)[0]:
            try:
                raw = s.recv(65536)
                answer = parse(raw) if raw else None
                key = answer.get("error", "ok") if isinstance(answer, dict) else repr(raw[:80])
            except OSError as e:
                key = errno.errorcode[e.errno]
            counts[key] = counts.get(key, 0) + 1
            conns.pop(left.pop(s)).close()
    counts["unanswered"] = len(left)
    return {"counts": counts}


def op_connect(c):
    try:
        return {"conn": keep(connect(c["socket"]))}
    except OSError as e:
        return {"connect_error": errno.errorcode[e.errno]}


def op_pass(c):
    """Send a kept connection to another process over inherited socket `fd`."""
    via = socket.socket(fileno=os.dup(c["fd"]))
    with via, conns.pop(c["conn"]) as s:
        socket.send_fds(via, [b"conn"], [s.fileno()])
    return {}


def op_receive(c):
    via = socket.socket(fileno=os.dup(c["fd"]))
    with via:
        _, fds, _, _ = socket.recv_fds(via, 16, 4)
    conn = socket.socket(fileno=fds[0])
    conn.settimeout(60)                 # the sender's O_NONBLOCK came with the descriptor
    return {"conn": keep(conn)}


def op_setresuid(c):
    os.setresuid(*c["ids"])
    return {"uids": list(os.getresuid())}


def op_move(c):
    with open(os.path.join(c["path"], "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    return {}


def op_state(c):
    """Who and where this process is, and what a new socket gets."""
    out = {"pid": os.getpid(), "uids": list(os.getresuid())}
    with open("/proc/self/cgroup") as f:
        out["cgroup"] = [l[3:].strip() for l in f if l.startswith("0::")][0]
    with socket.socket() as s:
        out["ifindex"] = s.getsockopt(socket.SOL_SOCKET, 62)
        try:
            out["bound"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0").decode()
        except OSError as e:        # bound to an ifindex that no longer exists
            out["bound"] = errno.errorcode[e.errno]
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
        out["inet6"] = "ok"
    except OSError as e:
        out["inet6"] = errno.errorcode[e.errno]
    return out


OPS = {name[3:]: f for name, f in globals().items() if name.startswith("op_")}
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    command = json.loads(line)
    try:
        result = OPS[command.pop("op")](command)
    except Exception as e:
        result = {"exception": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)
