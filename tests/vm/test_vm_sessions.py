"""Sessions that are not ssh logins, on the test VM: the real `su`, `at` and
`cron`, all through the shipped pam-auth-update profile (pam_vrf.so in
common-session and common-session-noninteractive).

su, from a confined ssh session (vrf.conf `@netops mgmt services=sshd
deny=inet6` above `* default`: the README's services-scoped rule, under
which a session of service su would get `* default`):

- `su op1` (to oneself; real password typed on a pseudo-terminal) keeps the
  placement: the su'd command runs in the ssh session's own cgroup
  (…/session-N.scope/vrf/mgmt), its sockets bound to mgmt and IPv6 refused,
  and the helper logs "keeps its placement" (rule not applied): a non-root
  invoker's session for their own account never loosens where they are;
- it does so with op1's PATH poisoned: a directory first in PATH holding a
  copy of python3 with a stdlib copy whose sitecustomize.py writes a marker
  when run with euid 0 (the pam_python attack of the design brief: proven
  armed by running that copy as root first), and, in a second run, a fake
  `python3` script writing a marker whenever it runs. No marker appears: no
  step of su's session stack runs a python3 found through the caller's PATH;
  also not with the helper stopped, when pam_vrf.so runs its offline
  decider (an absolute interpreter, a fixed environment): the session then
  proceeds with pam_vrf's "left unplaced: helper not running" line, and is
  still where the ssh session put it;
- `su op2` (another account) gets op2's rule: `* default`, i.e. the default
  VRF, …/session-N.scope/vrf with unbound sockets (vrf.conf(5): a session
  for another account is that account's).

at and cron: jobs are PAM sessions of service atd / cron (no logind session:
common-session-noninteractive has no pam_systemd), so the placement is
below atd.service / cron.service. vrf.conf `@netops mgmt deny=inet6` (every
service), `@G mgmt services=sshd,atd deny=inet6`, `* default`:

- op1's `at now` job and op1's `* * * * *` cron job, both scheduled from its
  ssh session: …/atd.service/vrf/mgmt and …/cron.service/vrf/mgmt, sockets
  bound to mgmt, IPv6 refused; the helper logs each with its service and rule;
- a cron job of a user of G (whose rule names sshd and atd, not cron) falls
  through to `* default`: …/cron.service/vrf, sockets unbound. services=
  scopes a rule, as documented: a rule without services= is what confines
  cron and at jobs too.

Passwords, vrf.conf, crontabs, at jobs, files and the helper's units are
put back afterwards, also on failure.
"""

import contextlib
import errno
import json
import os
import pwd
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import PROBE, PY, VRF, ifindex, q, run, wait_until  # noqa: E402

pytestmark = vmlib.vm_only

MEMBER, OTHER = "op1", "op2"
SU = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vm_su.py")
HELPER = {"SYSLOG_IDENTIFIER": vmlib.HELPER_IDENT}
UNBOUND = {"dev": "", "ifindex": 0}


def confined():
    mgmt, eperm = {"dev": VRF, "ifindex": ifindex(VRF)}, {"errno": errno.EPERM}
    return {"tcp4": mgmt, "udp4": mgmt, "tcp6": eperm, "udp6": eperm}


# --- su -----------------------------------------------------------------------------

SITECUSTOMIZE = """\
# tests/vm/test_vm_sessions.py: the trap. Runs whenever this stdlib copy is used.
import os
if os.geteuid() == 0:
    with open({marker!r}, "a") as f:
        f.write(f"pid {{os.getpid()}} euid 0\\n")
"""
FAKE_PYTHON = """\
#!/bin/sh
# tests/vm/test_vm_sessions.py: a fake python3 first in PATH.
echo "uid $(id -u) euid $(id -u) argv $0 $*" >> {marker}
exec /usr/bin/python3 "$@"
"""


@contextlib.contextmanager
def path_traps(user):
    """In `user`'s home: copy/bin/python3 (the interpreter) with
    copy/lib/python3.X (the stdlib, linked, plus a sitecustomize.py that
    marks euid 0) and fake/python3 (a script that always marks). Yields
    (copy bin dir, fake dir, marker dir); removes them all afterwards."""
    home = os.path.expanduser(f"~{user}")
    top = os.path.join(home, f".pvtrap-{vmlib.tag()}")
    marks = f"/var/tmp/pvmark-{vmlib.tag()}"
    real = os.path.realpath("/usr/bin/python3")               # /usr/bin/python3.11
    stdlib = os.path.join("/usr/lib", os.path.basename(real))
    try:
        os.makedirs(marks)
        os.chmod(marks, 0o1777)
        os.makedirs(f"{top}/copy/bin")
        shutil.copy2(real, f"{top}/copy/bin/python3")
        lib = f"{top}/copy/lib/{os.path.basename(real)}"
        os.makedirs(lib)
        for name in os.listdir(stdlib):
            if name != "sitecustomize.py":
                os.symlink(os.path.join(stdlib, name), os.path.join(lib, name))
        with open(f"{lib}/sitecustomize.py", "w") as f:
            f.write(SITECUSTOMIZE.format(marker=f"{marks}/sitecustomize-euid0"))
        os.makedirs(f"{top}/fake")
        with open(f"{top}/fake/python3", "w") as f:
            f.write(FAKE_PYTHON.format(marker=f"{marks}/fake-python3"))
        os.chmod(f"{top}/fake/python3", 0o755)
        run("chown", "-R", f"{user}:", top)
        yield f"{top}/copy/bin", f"{top}/fake", marks
    finally:
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(marks, ignore_errors=True)


def su_line(name, user, secret, command, path_first=None):
    env = f"PATH={q(path_first)}:$PATH " if path_first else ""
    return f"echo '== {name}'; {env}PVSU_PASSWORD={q(secret)} {PY} {SU} {user} {q(command)}"


def su_result(lines):
    """vm_su.py's JSON, with the su'd command's `id`, cgroup and probe picked out."""
    result = json.loads(lines[-1])
    out = result["output"].splitlines()
    result["id"] = next((line for line in out if line.startswith("uid=")), None)
    result["cgroup"] = next((line[3:] for line in out if line.startswith("0::")), None)
    result["probe"] = next((json.loads(line) for line in out if line.startswith("{")), None)
    return result


def test_su_from_a_confined_session_keeps_its_placement_and_never_runs_the_callers_python():
    rule, fallback = f"@netops {VRF} services=sshd deny=inet6", "* default"
    command = f"id; cat /proc/self/cgroup; {PY} {PROBE}"
    with vmlib.vrf_conf(rule, fallback) as where, vmlib.password(MEMBER) as secret, \
            vmlib.password(OTHER) as other_secret, path_traps(MEMBER) as (copy_bin, fake_bin, marks):
        # The trap is armed: that python3 runs the sitecustomize.py when root runs it.
        prefix = run(f"{copy_bin}/python3", "-c", "import sys; print(sys.prefix)",
                     env={"PATH": vmlib.SYSTEM_PATH}, cwd="/").stdout.strip()
        assert prefix == os.path.dirname(copy_bin), prefix
        assert os.listdir(marks) == ["sitecustomize-euid0"], os.listdir(marks)
        os.unlink(f"{marks}/sitecustomize-euid0")

        script = "\n".join([
            vmlib.SHELL_INFO,
            su_line("su self, python3 copy first in PATH", MEMBER, secret, command, copy_bin),
            su_line("su self, fake python3 first in PATH", MEMBER, secret, command, fake_bin),
            su_line("su other", OTHER, other_secret, command),
            "echo '== hold'; read line",
            su_line("su self, helper stopped", MEMBER, secret, command, copy_bin),
            "echo '== end'; read line",
        ])
        mark = vmlib.journal_mark()
        with vmlib.Login(MEMBER, script) as login:
            shell, identify = vmlib._shell_info(login.readline())
            scope = vmlib.cgroup_of(shell)
            assert scope.endswith(f"/vrf/{VRF}") and identify == VRF, scope
            runs = {name: su_result(lines) for name, lines in login.sections(until="hold").items()}
            with vmlib.helper_stopped():
                login.send("go")
                runs.update({name: su_result(lines) for name, lines in login.sections(until="end").items()})
            login.send("done")

        for name in ("su self, python3 copy first in PATH", "su self, fake python3 first in PATH",
                     "su self, helper stopped"):
            r = runs[name]
            assert r["rc"] == 0 and r["prompted"], (name, r)
            assert (r["id"] or "").startswith(f"uid={pwd.getpwnam(MEMBER).pw_uid}("), (name, r)
            assert r["cgroup"] == scope, f"{name}: the su'd command left the session's cgroup {scope}: {r}"
            assert r["probe"]["sockets"] == confined(), (name, r["probe"])
        # The helper's verdict for su to oneself: kept, the su rule (`* default`) not applied.
        kept = vmlib.wait_journal(mark, [f"user {MEMBER} (service su)", "keeps its placement", scope,
                                         f"rule {where[fallback]} not applied"], **HELPER)
        assert kept["PRIORITY"] == "5", kept            # authpriv.notice
        assert len([e for e in vmlib.journal(mark, **HELPER)
                    if f"user {MEMBER} (service su)" in e["MESSAGE"]]) == 2, "one verdict per su"
        # Without the helper: pam_vrf.so's offline decider said why, and moved nothing.
        vmlib.wait_journal(mark, [f"user {MEMBER} (service su) left unplaced", "helper not running",
                                  f"rule {where[fallback]}"], SYSLOG_IDENTIFIER=vmlib.PAM_IDENT)

        # Another account: its own rule (`* default`): the default VRF, beside the session's mgmt.
        other = runs["su other"]
        assert other["rc"] == 0 and (other["id"] or "").startswith(f"uid={pwd.getpwnam(OTHER).pw_uid}("), other
        assert other["cgroup"] == scope.rsplit("/", 1)[0], other       # …/session-N.scope/vrf
        assert all(other["probe"]["sockets"][k] == UNBOUND for k in vmlib.SOCKETS), other["probe"]
        vmlib.wait_journal(mark, [f"user {OTHER} (service su) placed in VRF default (rule {where[fallback]})"],
                           **HELPER)

        time.sleep(1)
        assert os.listdir(marks) == [], {m: open(f"{marks}/{m}").read() for m in os.listdir(marks)}


# --- at and cron --------------------------------------------------------------------------

def job_line(name):
    """A job that writes the probe's JSON to ~/pvjob-NAME.json (complete, or not at all)."""
    return f"{PY} {PROBE} > $HOME/pvjob-{name}.tmp && mv $HOME/pvjob-{name}.tmp $HOME/pvjob-{name}.json"


def read_job(user, name):
    path = os.path.join(os.path.expanduser(f"~{user}"), f"pvjob-{name}.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def jobs_removed(*users):
    try:
        yield
    finally:
        for user in users:
            run("crontab", "-u", user, "-r", check=False)
            for line in run("atq", check=False).stdout.splitlines():
                fields = line.split()
                if fields and fields[-1] == user:
                    run("atrm", fields[0], check=False)
            home = os.path.expanduser(f"~{user}")
            for name in os.listdir(home):
                if name.startswith("pvjob-"):
                    os.unlink(os.path.join(home, name))


def test_at_and_cron_jobs_are_placed_by_their_rule_and_services_scopes_it():
    with vmlib.group("pvj") as g, vmlib.user(g) as scoped, jobs_removed(MEMBER, scoped):
        everywhere, atd_only, fallback = (f"@netops {VRF} deny=inet6", f"@{g} {VRF} services=sshd,atd deny=inet6",
                                          "* default")
        with vmlib.vrf_conf(everywhere, atd_only, fallback) as where:
            mark = vmlib.journal_mark()
            # Scheduled by op1 itself, from its (confined) ssh session.
            vmlib.ssh(MEMBER, f"set -e; cd; rm -f pvjob-*; echo {q(job_line('at'))} | at now 2>/dev/null; "
                              f"echo {q('* * * * * ' + job_line('cron'))} | crontab -")
            run("crontab", "-u", scoped, "-", input=f"* * * * * {job_line('cron')}\n")
            at = wait_until("op1's at job", lambda: read_job(MEMBER, "at"), timeout=60, interval=1)
            # cron starts jobs on the minute: wait for the next one.
            cron = wait_until("op1's cron job", lambda: read_job(MEMBER, "cron"), timeout=90, interval=1)
            cron_scoped = wait_until(f"{scoped}'s cron job", lambda: read_job(scoped, "cron"), timeout=30,
                                     interval=1)

            assert at["cgroup"].startswith("/system.slice/atd.service/") and \
                at["cgroup"].endswith(f"/vrf/{VRF}"), at
            assert at["sockets"] == confined(), at
            vmlib.wait_journal(mark, [f"user {MEMBER} (service atd) placed in VRF {VRF} (rule {where[everywhere]})"],
                               **HELPER)

            assert cron["cgroup"].startswith("/system.slice/cron.service/") and \
                cron["cgroup"].endswith(f"/vrf/{VRF}"), cron
            assert cron["sockets"] == confined(), cron
            vmlib.wait_journal(mark, [f"user {MEMBER} (service cron) placed in VRF {VRF} "
                                      f"(rule {where[everywhere]})"], **HELPER)

            # services=sshd,atd does not cover cron: `* default` applies.
            assert cron_scoped["cgroup"].startswith("/system.slice/cron.service/") and \
                cron_scoped["cgroup"].endswith("/vrf"), cron_scoped
            assert all(cron_scoped["sockets"][k] == UNBOUND for k in vmlib.SOCKETS), cron_scoped
            vmlib.wait_journal(mark, [f"user {scoped} (service cron) placed in VRF default "
                                      f"(rule {where[fallback]})"], **HELPER)
