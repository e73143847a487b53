#!/usr/bin/python3
"""P4 with a directory (not a test; pytest does not collect it): the helper's
per-login decision for an LDAP user, on the test VM. vagrant/ci/vm-run-tests
runs it after the VM suite (p4dir.json, p4dir.txt); vagrant/ci/test-vm prints
p4dir.txt.

    python3 tests/vm/bench_p4dir.py [--repeat 30] [--cold 5] [--out DIR]   (as root, on the VM)

The directory: slapd on 127.0.0.1 (tests/vm/vm_directory.py) with 1 000
posixGroups; the user `p4u` is a memberUid of 200 of them (every fifth).
vrf.conf (a file of its own, not /etc/security/vrf.conf): one line per LDAP
group, `@GROUP mgmt services=p4other` (1 000 distinct names: the
enumeration path of policy.GroupNames), then `@LAST mgmt services=sshd` for
the user's last group: the match is the last line.

What is timed is what the helper does per `open` (bench/bench_policy.py's
P4 on the host, there with /etc/group): policy.account(user) (getpwnam +
getgrouplist), policy.decide(rules, account, "sshd") (the policy parsed
once, as the helper keeps it), nss.user(user) (the uid placement looks up),
in Debian's python3 with the installed pam_vrf, per call:
- SSSD warm: the entries in SSSD's caches (after one decision);
- SSSD cold: sssd restarted with its caches emptied before each call (sssd
  up and online: it has answered for another LDAP user first);
- nslcd: libnss-ldapd, no cache: every look-up is a search.
Medians, and every sample in p4dir.json.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vm_directory  # noqa: E402
import vmlib  # noqa: E402

GROUPS, MEMBER_EVERY = 1000, 5
USER, UID, GID = "p4u", 79001, 79000
OTHER = "p4other"                       # another LDAP user: sssd online before the cold call
CONF = "/run/pam-vrf-bench-p4dir.conf"
GOAL_MS = 2.0

DECIDE = """
import json, sys, time
from pam_vrf import nss, policy
conf, user, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
rules = policy.load(conf)
out = []
for _ in range(repeat):
    t0 = time.perf_counter_ns()
    account = policy.account(user)
    rule = policy.decide(rules, account, "sshd")
    uid = nss.user(user).uid
    out.append([(time.perf_counter_ns() - t0) / 1e6, rule.where if rule else None, len(account.gids), uid])
print(json.dumps(out))
"""


def say(text):
    """Progress on stdout (p4dir.log keeps it if the run is cut short)."""
    print(f"[p4dir {time.strftime('%H:%M:%S')}] {text}", flush=True)


def decide(repeat):
    proc = subprocess.run([vmlib.PY, "-I", "-c", DECIDE, CONF, USER, str(repeat)], capture_output=True,
                          text=True, timeout=600, cwd="/")
    if proc.returncode != 0:
        raise RuntimeError(f"decision run failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def check(samples, last_line):
    for ms, where, gids, uid in samples:
        if where != f"{CONF}:{last_line}" or gids != GROUPS // MEMBER_EVERY + 1 or uid != UID:
            raise RuntimeError(f"wrong decision: {where} with {gids} gids, uid {uid} (want {CONF}:{last_line})")
    return [s[0] for s in samples]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()

    names = [f"p4g{i:04d}" for i in range(GROUPS)]
    members = [n for i, n in enumerate(names) if i % MEMBER_EVERY == MEMBER_EVERY - 1]
    users = [(USER, UID, GID, "/nonexistent"), (OTHER, UID + 1, GID, "/nonexistent")]
    groups = [("p4users", GID, [])] + [(n, 80000 + i, [USER] if n in members else [OTHER])
                                       for i, n in enumerate(names)]
    lines = ["# bench p4dir: 1 000 LDAP groups, the match is the last line"]
    lines += [f"@{n} mgmt services=p4other" for n in names] + [f"@{members[-1]} mgmt services=sshd"]
    with open(CONF, "w") as f:
        f.write("\n".join(lines) + "\n")
    last_line = len(lines)
    result = {"groups": GROUPS, "member_of": len(members), "rules": len(lines) - 1,
              "kernel": platform.release(), "release": vmlib.release(), "when": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                             time.gmtime())}
    try:
        t0 = time.monotonic()
        with vm_directory.slapd(users, groups):
            result["slapd_load_s"] = round(time.monotonic() - t0, 1)
            say(f"slapd loaded in {result['slapd_load_s']} s")
            with vm_directory.backend("sssd", USER) as sssd:
                decide(1)                                               # warm
                result["sssd_warm_ms"] = check(decide(args.repeat), last_line)
                say(f"SSSD warm: {result['sssd_warm_ms']}")
                cold = []
                for _ in range(args.cold):
                    sssd.restart(cold=True)
                    vmlib.wait_until("sssd online", lambda: vmlib.run("getent", "passwd", OTHER,
                                                                      check=False).returncode == 0, timeout=60)
                    cold += check(decide(1), last_line)
                    say(f"SSSD cold: {cold}")
                result["sssd_cold_ms"] = cold
            with vm_directory.backend("nslcd", USER):
                result["nslcd_ms"] = check(decide(5), last_line)
    finally:
        os.unlink(CONF)

    def med(key):
        return round(statistics.median(result[key]), 2)

    text = [f"P4-dir: helper decision per login, LDAP user in {len(members)} of {GROUPS} LDAP groups, "
            f"{len(lines) - 1} @group rules, match last ({result['release']}, kernel {result['kernel']}, TCG)",
            f"  SSSD warm cache     median {med('sssd_warm_ms')} ms ({len(result['sssd_warm_ms'])} calls; goal "
            f"<= {GOAL_MS} ms as P4)",
            f"  SSSD cold cache     median {med('sssd_cold_ms')} ms ({len(result['sssd_cold_ms'])} calls, sssd "
            f"restarted with empty caches before each)",
            f"  nslcd (no cache)    median {med('nslcd_ms')} ms ({len(result['nslcd_ms'])} calls)"]
    vmlib.write_results(args.out, "p4dir", result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
