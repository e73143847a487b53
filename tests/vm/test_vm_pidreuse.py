"""Pid reuse against the helper on Debian 12's kernel (6.1: no SO_PEERPIDFD),
on the test VM. See testlab/pidreuse.py for how the attack is staged: a pid
namespace whose init (the driver) forces the attacker's freed pid onto a
victim, and a second helper instance inside that namespace (as pam-vrf,
ambient CAP_BPF/CAP_NET_ADMIN/CAP_DAC_OVERRIDE only, own sockets and
vrf.conf granting the attacker `exec=mgmt`).

What is asserted:

- the premise: this kernel has no SO_PEERPIDFD, and the victim (a process of
  op2) really got the pid that SO_PEERCRED recorded for the attacker's
  connections;
- a request that sends the victim's pidfd (or the pidfd of pid 1) is refused
  as "not the sender's"; one without a pidfd is refused; forged
  SCM_CREDENTIALS are refused by the kernel (EPERM) before the helper sees them;
- the victim's cgroup is unchanged; the one request that moves anything,
  with the child's own pidfd, moves the child (the real sender) into
  <cgroup>/vrf/mgmt, and nobody else;
- pid 1 (root) is never placed: `place` on helper.sock and `open` on
  root.sock from the namespace's init are refused;
- the helper logs the refusals (syslog authpriv, ident pam-vrf-helper) and
  keeps answering.

Everything is removed afterwards: the namespace ends with its init, the
cgroups the second helper made are removed, and so are its directory and
the throwaway user.
"""

import errno
import json
import os
import pwd
import shutil
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import PY, VRF, run  # noqa: E402

pytestmark = vmlib.vm_only

DRIVER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "testlab", "pidreuse.py")
SO_PEERPIDFD = 77           # Linux 6.5
VICTIM = "op2"
CAPS = "+bpf,+net_admin,+dac_override"


@vmlib.only_on("bookworm", "the premise is 6.1's: no SO_PEERPIDFD; trixie's 6.12 has it (tests/vm/test_smoke.py), "
                           "the attack below runs on both: the helper does not use it")
def test_kernel_has_no_so_peerpidfd():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        try:
            a.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4)
        except OSError as e:
            assert e.errno == errno.ENOPROTOOPT, e
        else:
            raise AssertionError(f"kernel {os.uname().release} has SO_PEERPIDFD: this VM is not Debian 12's 6.1")


def stage(attacker, where):
    """Run the driver once in a new pid namespace; its JSON."""
    helper_account = pwd.getpwnam("pam-vrf")
    os.makedirs(where, mode=0o755)
    os.chown(where, helper_account.pw_uid, helper_account.pw_gid)
    config = os.path.join(where, "vrf.conf")
    with open(config, "w") as f:
        f.write(f"# tests/vm/test_vm_pidreuse.py\n{attacker.pw_name}  -  exec={VRF}\n")
    os.chmod(config, 0o644)
    victim = pwd.getpwnam(VICTIM)
    params = {
        "socket": os.path.join(where, "helper.sock"), "vrf": VRF, "helper_log": os.path.join(where, "helper.log"),
        "helper_argv": ["setpriv", "--reuid", "pam-vrf", "--regid", "pam-vrf", "--init-groups",
                        "--inh-caps", CAPS, "--ambient-caps", CAPS, vmlib.PAM_VRF_HELPER,
                        "--socket", os.path.join(where, "helper.sock"), "--config", config,
                        "--state", os.path.join(where, "attachments.json")],
        "attacker_ids": [attacker.pw_uid, attacker.pw_gid], "victim_ids": [victim.pw_uid, victim.pw_gid],
        "victim_name": VICTIM,
    }
    proc = run("unshare", "--pid", "--fork", "--mount-proc", PY, DRIVER, "driver", json.dumps(params),
               check=False, timeout=180, cwd="/")
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        with open(params["helper_log"], errors="replace") as f:
            log = f.read()
        raise AssertionError(f"driver exit {proc.returncode}: {proc.stdout}{proc.stderr}\nhelper: {log}") from None


def remove_vrf_cgroups(base):
    """The cgroups the namespace's helper made below `base` (this test's own cgroup)."""
    top = os.path.join(vmlib.cgroup_mount(), base.lstrip("/"), "vrf")

    def removed():
        for here in (os.path.join(top, VRF), top):
            try:
                os.rmdir(here)
            except FileNotFoundError:
                pass
            except OSError:         # EBUSY: the namespace's last processes are still going
                return False
        return True
    vmlib.wait_until(f"{top} to be removable", removed, timeout=15)


def staged(out):
    """The attack was staged: the freed pid went to the victim (unless
    something forked in between), and every request reached the helper. The
    helper closes a connection that sends nothing within its 1 s client
    deadline (a freeze defence), and the parent's connections wait while the
    driver forces the pid onto the victim: under TCG on a loaded host that can
    take longer (the child's sends then fail, EPIPE, or get no reply)."""
    replies = out.get("attacker", {}).get("replies", {})
    late = [a for a, r in replies.items() if "forged" not in a and not (isinstance(r, dict) and "ok" in r)]
    return out.get("victim") == out.get("freed") and not late


def test_pid_reuse_moves_only_the_real_sender_and_refuses_pid_1():
    own = vmlib.cgroup_of(os.getpid()).split("/vrf", 1)[0].rstrip("/")
    with vmlib.user(prefix="pvr") as name:
        attacker = pwd.getpwnam(name)
        victim_uid = pwd.getpwnam(VICTIM).pw_uid
        where = f"/run/pvt-{vmlib.tag()}"
        mark = vmlib.journal_mark()
        try:
            for _ in range(5):
                out = stage(attacker, where)
                if staged(out):
                    break
                shutil.rmtree(where, ignore_errors=True)
            assert "error" not in out, out
            assert staged(out), f"the attack could not be staged in 5 tries (the last: {out})"
            # The premise: the pid SO_PEERCRED recorded for the attacker's connections is the victim's now.
            assert out["victim"] == out["freed"] == out["attacker"]["parent"], out
            assert out["victim_uid"] == victim_uid and out["attacker"]["pid_owner"] == victim_uid, out
            child = out["attacker"]["child"]
            replies = out["attacker"]["replies"]

            for attempt in ("victim pidfd", "pid 1 pidfd"):
                r = replies[attempt]
                assert r.get("ok") is False and "not the sender's" in r["error"], (attempt, r)
            assert replies["no pidfd"].get("ok") is False and "pidfd" in replies["no pidfd"]["error"], replies
            for attempt in ("victim pidfd, forged credentials", "forged credentials, no pidfd"):
                assert replies[attempt] == {"send_error": "EPERM"}, (attempt, replies[attempt])

            # Nobody but the sender moved.
            assert out["victim_after"] == out["victim_before"], out
            assert out["victim_before"] == own or out["victim_before"].startswith(own), out
            expected = f"{out['victim_before'].split('/vrf', 1)[0].rstrip('/')}/vrf/{VRF}"
            assert replies["own pidfd"] == {"v": 2, "ok": True, "cgroup": expected}, replies["own pidfd"]
            assert out["attacker"]["cgroup"] == expected, out["attacker"]

            # pid 1 (root, the namespace's init) is never placed.
            for op, r in out["pid1"].items():
                assert r["ok"] is False and "pid 1 is never placed" in r["error"], (op, r)
            assert out["ping_after"] is True, out

            helper = {"SYSLOG_IDENTIFIER": vmlib.HELPER_IDENT}
            vmlib.wait_journal(mark, [f"refused place from pid ? uid {attacker.pw_uid}:",
                                      f"the pidfd sent is not the sender's (pid {child})"], **helper)
            vmlib.wait_journal(mark, [f"placed pid {child} in VRF {VRF}", f"uid {attacker.pw_uid} (pam-vrf exec)"],
                               **helper)
            vmlib.wait_journal(mark, ["refused place from pid ? uid 0:", "pid 1 is never placed"], **helper)
            vmlib.wait_journal(mark, ["refused open from pid ? uid 0:", "pid 1 is never placed"], **helper)
        finally:
            remove_vrf_cgroups(own)
            shutil.rmtree(where, ignore_errors=True)
