"""From tests/helper_attacks.py (USERNS_CLAIM): Run as a user inside a user +
pid namespace of its own (`unshare --user --map-root-user --pid --fork
--mount-proc`): there it holds CAP_SYS_ADMIN over its pid namespace, so the
kernel lets it claim any pid OF THAT NAMESPACE in SCM_CREDENTIALS. argv:
socket, VRF, an inherited pidfd of a victim outside, the victim's pid
(outside). Prints the outcome of each attempt.
"""

import array, errno, json, os, socket, struct, sys
path, vrf, victim_fd, victim_pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(w)
    os.read(r, 1)           # a process of the same user, in the namespace
    os._exit(0)
os.close(r)


def send(fds, creds=None):
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(20)
        s.connect(path)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        if creds:
            anc.append((socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("3i", *creds)))
        try:
            s.sendmsg([json.dumps({"v": 2, "op": "place", "vrf": vrf}).encode()], anc)
        except OSError as e:
            return {"send_error": errno.errorcode[e.errno]}
        raw = s.recv(65536)
    return json.loads(raw) if raw else None


def where(pid):
    with open(f"/proc/{pid}/cgroup") as f:
        return [l[3:].strip() for l in f if l.startswith("0::")][0]


out = {"me": os.getpid(), "child": child, "uid": os.getuid(), "replies": {}}
try:
    os.pidfd_open(victim_pid)           # its pid means nothing in here
    out["victim visible"] = True
except OSError:
    out["victim visible"] = False
replies = out["replies"]
replies["victim pidfd"] = send([victim_fd])
replies["victim pidfd, child claimed"] = send([victim_fd], (child, 0, 0))
replies["unknown pid claimed"] = send([os.pidfd_open(os.getpid())], (99999, 0, 0))
replies["child pidfd, child claimed"] = send([os.pidfd_open(child)], (child, 0, 0))
out["child cgroup"], out["my cgroup"] = where(child), where("self")
print(json.dumps(out), flush=True)
