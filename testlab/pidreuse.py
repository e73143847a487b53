#!/usr/bin/python3
"""The pid-reuse attack on the helper (kernel 6.1: no SO_PEERPIDFD), staged
by tests/vm/test_vm_pidreuse.py (the VM's helper) and tests/test_helper.py
(a throwaway helper in a netns on the host); not a test module.

    unshare --pid --fork --mount-proc python3 testlab/pidreuse.py driver JSON     (root)

The driver is pid 1 of a new pid namespace, so that it can choose which pid
the next process gets (/proc/sys/kernel/ns_last_pid) and the helper sees the
same pids as the attacker: it starts a second helper instance in the
namespace (as user pam-vrf, ambient capabilities only, own socket directory
and vrf.conf), then:

  1. itself (pid 1, root) asks the helper for `place` on helper.sock and for
     `open` on root.sock, each with its own pidfd: both must be refused;
  2. starts the attacker (user with `exec=` for the VRF): the parent connects
     one socket per attempt (SO_PEERCRED records its pid), forks a child that
     keeps the connections, prints its pid and exits;
  3. reaps it, writes that pid - 1 to ns_last_pid and forks the victim (a
     `sleep` of another user), which therefore gets the freed pid: the
     parent's SO_PEERCRED pid now names the victim;
  4. lets the child send its `place` requests (ATTEMPTS below) and reports
     everything as one JSON line: the replies, the victim's cgroup before and
     after, the child's cgroup after, and whether the helper still answers.

JSON: helper_argv, helper_log, socket, vrf, attacker_ids and victim_ids
([uid, gid]), victim_name; optional victim_cgroup (a cgroup directory the
victim joins first).

    pidreuse.py attacker SOCKET GO_FD VRF       (run by the driver, as the attacker,
                                                 from this file's text: python3 -c)
"""

import array
import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

ATTEMPTS = (
    "victim pidfd",                         # the pidfd of the process that now has the parent's pid
    "pid 1 pidfd",                          # the namespace's init (the driver, root)
    "no pidfd",                             # only what the kernel adds (SCM_CREDENTIALS: the child)
    "victim pidfd, forged credentials",     # and claiming the victim's pid (the kernel refuses)
    "forged credentials, no pidfd",
    "own pidfd",                            # legitimate: the child itself enters the VRF
)


def cgroup_of(pid):
    with open(f"/proc/{pid}/cgroup") as f:
        return [line[3:].strip() for line in f if line.startswith("0::")][0]


def uid_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return [int(line.split()[1]) for line in f if line.startswith("Uid:")][0]


def drop(uid, gid):
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def driver(p):
    from pam_vrf import client, protocol
    out = {"driver_pid": os.getpid()}
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}      # no JOURNAL_STREAM: log to stderr too
    with open(p["helper_log"], "ab") as log:
        helper = subprocess.Popen(p["helper_argv"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd="/")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.call({"op": "ping"}, p["socket"])
            client.call({"op": "ping"}, protocol.root_socket(p["socket"]))
            break
        except client.HelperError:
            if helper.poll() is not None or time.monotonic() > deadline:
                print(json.dumps({"error": f"the helper did not start (exit {helper.poll()})"}), flush=True)
                return 1
            time.sleep(0.1)
    out["helper_pid"] = helper.pid

    # 1. pid 1 itself: never placed, whatever it asks.
    out["pid1"] = {
        "place": client.request({"op": "place", "vrf": p["vrf"]}, p["socket"], 10),
        "open": client.request({"op": "open", "user": p["victim_name"], "service": "sshd"},
                               protocol.root_socket(p["socket"]), 10),
    }

    # 2. the attacker's parent connects and exits; its child keeps the connections.
    go_r, go_w = os.pipe()
    with open(os.path.abspath(__file__)) as f:          # the attacker may not be able to read the checkout
        source = f.read()
    attacker = subprocess.Popen([sys.executable, "-c", source, "attacker", p["socket"], str(go_r),
                                 p["vrf"]], pass_fds=[go_r], stdout=subprocess.PIPE, cwd="/", env=env,
                                preexec_fn=lambda: drop(*p["attacker_ids"]))
    os.close(go_r)
    freed = int(attacker.stdout.readline())
    attacker.wait()                     # reaped: the pid is free

    # 3. the victim takes the freed pid (nothing else forks in this namespace now).
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(freed - 1))
    ready_r, ready_w = os.pipe()
    victim = os.fork()
    if victim == 0:
        try:
            os.close(ready_r)
            if p.get("victim_cgroup"):
                with open(os.path.join(p["victim_cgroup"], "cgroup.procs"), "w") as f:
                    f.write("0")
            drop(*p["victim_ids"])
            os.write(ready_w, b"x")
            os.execv("/bin/sleep", ["sleep", "600"])
        finally:
            os._exit(127)
    os.close(ready_w)
    os.read(ready_r, 1)
    out.update(freed=freed, victim=victim, victim_uid=uid_of(victim), victim_before=cgroup_of(victim))

    # 4. the child's requests.
    os.write(go_w, b"go")
    out["attacker"] = json.loads(attacker.stdout.readline())
    out["victim_after"] = cgroup_of(victim)
    try:
        out["ping_after"] = client.call({"op": "ping"}, p["socket"], 10).get("ok")
    except client.HelperError as e:
        out["ping_after"] = str(e)
    os.kill(victim, signal.SIGKILL)
    os.waitpid(victim, 0)
    helper.terminate()
    helper.wait(20)
    print(json.dumps(out), flush=True)
    return 0


def attacker(path, go, vrf):
    conns = {}
    for attempt in ATTEMPTS:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(20)
        s.connect(path)                 # SO_PEERCRED: this (the parent's) pid
        conns[attempt] = s
    parent = os.getpid()
    if os.fork():
        print(parent, flush=True)
        os._exit(0)
    os.read(go, 2)
    me = os.getpid()
    out = {"child": me, "parent": parent, "replies": {}, "pid_owner": uid_of(parent)}
    forged = (parent, os.getuid(), os.getgid())

    def send(attempt, fds, creds=None):
        anc = []
        if fds:
            anc.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes()))
        if creds:
            anc.append((socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("3i", *creds)))
        s = conns[attempt]
        try:
            s.sendmsg([json.dumps({"v": 2, "op": "place", "vrf": vrf}).encode()], anc)
        except OSError as e:
            out["replies"][attempt] = {"send_error": errno.errorcode[e.errno]}
            return
        raw = s.recv(65536)
        out["replies"][attempt] = json.loads(raw) if raw else None

    send("victim pidfd", [os.pidfd_open(parent)])
    send("pid 1 pidfd", [os.pidfd_open(1)])
    send("no pidfd", [])
    send("victim pidfd, forged credentials", [os.pidfd_open(parent)], forged)
    send("forged credentials, no pidfd", [], forged)
    send("own pidfd", [os.pidfd_open(me)])
    out["cgroup"] = cgroup_of(me)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "driver":
        sys.exit(driver(json.loads(sys.argv[2])))
    sys.exit(attacker(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
