"""P4 — the policy at scale: 10 000 rules, a user in 1 000 groups.

Real NSS entries (files backend, as on most hosts): 1 000 groups the user
is a member of and 200 it is not, made with groupadd / useradd -G and
removed with userdel / groupdel afterwards (the bench times that too).

The rule file (10 000 lines) is the first-match worst case for this user:
9 999 lines that do not match, then the one that does:
    3 333  `OTHERUSER target`                  other users by name
    3 333  `@NOTMEMBER target [options]`        200 real groups the user is not in
    3 333  `@MEMBER target services=other`      the user's groups, for other PAM services
        1  `@MEMBER_999 TARGET plain services=sshd`      <- the match
A second file swaps the @NOTMEMBER lines for 1 000 distinct group names
NSS does not know (a stale policy, or LDAP/SSSD without enumeration):
each costs one getgrnam() on every login.

Measured in-process with Debian's python3 (the bench runs on it), the
median of repeated calls; each decide() builds its group cache afresh,
as a login does:
    decide(rules, account)     the Account already looked up
    decide(rules, user name)   including the NSS lookup policy.account()
    account(user)              the NSS lookup alone
    load(path)                 read + parse the 10 000-line file
"""

import os
import time

from bench_common import median, say, sh

MEMBER_GROUPS = 1000
OTHER_GROUPS = 200
RULES = 10_000


def _groupadd_all(run, names):
    for name in names:
        sh("groupadd", name)        # not --system: its GID range (< 1000) holds only ~900


def _write_rules(path, user, members, others, target, unknown=None):
    lines = ["# bench P4: 10 000 rules, the match is the last line"]
    n_each = (RULES - 1) // 3
    options = ["", "deny=inet6", "mark=7", "priority=3", "deny=raw,dgram strict"]
    for i in range(n_each):
        lines.append(f"{user}x{i:05d}  vrf{i % 50}")
    if unknown is None:
        for i in range(n_each):
            lines.append(f"@{others[i % len(others)]}  vrf{i % 50}  {options[i % len(options)]}".rstrip())
    else:
        for i in range(n_each):
            lines.append(f"@{unknown}{i % 1000:04d}  vrf{i % 50}  {options[i % len(options)]}".rstrip())
    for i in range(RULES - 1 - 2 * n_each):
        lines.append(f"@{members[i % len(members)]}  vrf{i % 50}  services=login,su")
    lines.append(f"@{members[-1]}  {target}  plain services=sshd")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o644)
    return len(lines) - 1


def _time(fn, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        value = fn()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out, value


def _profile(fn, top=8):
    import cProfile
    import io
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _in_situ(lab, config, user, n=10):
    """session.open_session with the 10 000-rule policy, the helper up: what a
    login with such a policy pays (bench_login.DIRECT, with its phase breakdown)."""
    import json
    import subprocess
    import bench_login
    from bench_common import PY, Helper, join_cgroup
    say(f"P4: open_session with the 10 000-rule policy (helper up), {n} placements")
    helper = Helper(lab, config, suffix="k").start()
    try:
        proc = subprocess.run(lab.nsenter([PY, "-c", bench_login.DIRECT, user, "sshd", config, helper.socket,
                                           lab.target, str(n), "0.03"]),
                              capture_output=True, text=True, cwd="/", timeout=120,
                              preexec_fn=join_cgroup(lab.cgroup("p4d")))
    finally:
        helper.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"P4 in-situ run failed:\n{proc.stderr}")
    d = json.loads(proc.stdout)
    return {"open_ms": [v / 1e6 for v in d["total"]], "placed": d["placed"],
            "phases_ms": {k: median(v) / 1e6 for k, v in d["phases"].items()}}


def bench(lab, repeats=30):
    from pam_vrf import policy
    run = lab.run
    members = [run.name(f"g{i:04d}") for i in range(MEMBER_GROUPS)]
    others = [run.name(f"o{i:03d}") for i in range(OTHER_GROUPS)]
    user = run.name("m")
    say(f"P4: groupadd {len(members) + len(others)} groups, useradd a member of {len(members)}")
    t0 = time.monotonic()
    # Cleanup: run.close() sweeps every pvb<tag>* user and group, even on Ctrl-C.
    _groupadd_all(run, members + others)
    t_groups = time.monotonic() - t0
    t0 = time.monotonic()
    sh("useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/sh",
       "-G", ",".join(members), user)
    t_user = time.monotonic() - t0

    acct = policy.account(user)
    if len(acct.gids) != MEMBER_GROUPS + 1:
        raise RuntimeError(f"NSS shows {len(acct.gids)} groups for {user}, expected {MEMBER_GROUPS + 1}")

    out = {"setup_s": {"groupadd": t_groups, "useradd": t_user}, "groups": len(acct.gids)}
    for variant, unknown in (("known", None), ("unknown", run.name("z"))):
        path = os.path.join(run.dir, f"p4-{variant}.conf")
        count = _write_rules(path, user, members, others, lab.target, unknown)
        parse_ms, rules = _time(lambda: policy.load(path), 7)
        if len(rules) != count:
            raise RuntimeError(f"parsed {len(rules)} rules, wrote {count}")
        say(f"P4: {variant} groups: decide() x {repeats}")
        first_t0 = time.perf_counter_ns()
        rule = policy.decide(rules, acct, "sshd")
        first_ms = (time.perf_counter_ns() - first_t0) / 1e6
        if rule is None or rule.line != count + 1 or rule.target != lab.target:
            raise RuntimeError(f"wrong decision: {rule}")
        n = repeats if variant == "known" else max(3, repeats // 6)
        decide_ms, _ = _time(lambda: policy.decide(rules, acct, "sshd"), n)
        full_ms, rule2 = _time(lambda: policy.decide(rules, user, "sshd"), n)
        if rule2 != rule:
            raise RuntimeError("decision by name differs from decision by Account")
        out[variant + "_profile"] = _profile(lambda: policy.decide(rules, user, "sshd"))
        out[variant] = {"rules": count, "parse_ms": parse_ms, "decide_ms": decide_ms,
                        "decide_first_ms": first_ms, "decide_with_nss_ms": full_ms}
    out["in_situ"] = _in_situ(lab, os.path.join(run.dir, "p4-known.conf"), user)
    account_ms, _ = _time(lambda: policy.account(user), repeats)
    out["account_ms"] = account_ms
    out["etc_group_lines"] = sum(1 for _ in open("/etc/group"))

    # Cleanup timed here (the sweep would do it anyway): it is part of the cost of this bench.
    say("P4: userdel + groupdel")
    t0 = time.monotonic()
    sh("userdel", "-f", user, check=False)
    sh("groupdel", user, check=False)
    for name in members + others:
        sh("groupdel", name, check=False)
    out["setup_s"]["cleanup"] = time.monotonic() - t0
    return out


def summary(out):
    return {k: median(v) if isinstance(v, list) else v for k, v in out.items()}
