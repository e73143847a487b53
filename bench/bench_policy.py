"""P4 — the policy at scale: 10 000 rules, a user in 1 000 groups.

NSS entries in the files backend, as on most hosts: 1 000 groups the
user is a member of and 200 it is not, in copies of /etc/passwd and
/etc/group that are bind-mounted over the originals in a private mount
namespace for the processes measured here (bench_common.PrivateNss): glibc
reads them as it reads the real files, and the host's own account files
are never touched (groupadd x1200 took 8-55 s here, and other test runs
on the same host would see the groups).

The rule file (10 000 lines) is the first-match worst case for this user:
9 999 lines that do not match, then the one that does:
    3 333  `OTHERUSER target`                  other users by name
    3 333  `@NOTMEMBER target [options]`        200 real groups the user is not in
    3 333  `@MEMBER target services=other`      the user's groups, for other PAM services
        1  `@MEMBER_999 TARGET plain services=sshd`      <- the match
A second file swaps the @NOTMEMBER lines for 1 000 distinct group names
NSS does not know (a stale policy, or LDAP/SSSD without enumeration).

Since protocol v2 the helper keeps the parsed policy (PolicyCache: one
stat() per request, a re-read only when the file changed), so what a
login pays for the policy is the helper's decision per `open`:
    PolicyCache.rules()      the stat() that finds the file unchanged
    policy.account(user)     NSS: the user and its group list
    policy.decide(...)       first match over the 10 000 rules
    nss.user(user)           the uid look-up placement does after deciding
measured in a python3 process (Debian's, the helper's interpreter) inside
that mount namespace, median of repeated calls. Then the whole `open` round trip through two
helpers side by side (shuffled interleaved rounds): one with the
10 000-rule file, one with only the matching line. The client moves
itself back to a base cgroup before each request (outside the timing),
so the helper's move right after is back to back for the kernel (no
grace-period wait in the figure): the difference is the policy's cost.
"""

import json
import os
import subprocess
import sys
import time

from bench_common import PY, Helper, PrivateNss, bootstrap_ci, join_cgroup, median, say
from testlab import progs  # noqa: E402,I100  (bench_common puts the repository on sys.path)

MEMBER_GROUPS = 1000
OTHER_GROUPS = 200
RULES = 10_000

# Root, Debian's python3: argv user service rounds seed then NAME ROOT_SOCK BASE_CGROUP triples.
# Prints {"NAME": [[ms, verdict], ...]}.
OPEN_CLIENT = progs.source("bench_open_client")


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
    value = None
    for _ in range(n):
        t0 = time.perf_counter_ns()
        value = fn()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out, value


def _profile(fn, top=10):
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


def _decisions(paths, user, repeats):
    """The helper's per-`open` decision, as Placement.open_session does it
    before moving, for each policy file in `paths` ({variant: path}),
    measured in interleaved rounds (wall clock, and this thread's CPU time)."""
    import random
    from pam_vrf import nss, policy
    from pam_vrf.helper.policy_cache import PolicyCache
    from pam_vrf.log import Logger
    out = {}
    caches = {}
    for variant, path in paths.items():
        caches[variant] = PolicyCache(path, Logger("pam-vrf-bench", path="/nonexistent"))
        parse_ms, rules = _time(caches[variant].rules, 1)       # the first call parses
        out[variant] = {"rules": len(rules), "parse_ms": parse_ms[0], "decision_ms": [], "cpu_ms": [],
                        "stat_ms": [], "account_ms": [], "decide_ms": []}

    def decision(cache):
        rules = cache.rules()
        account = policy.account(user)
        rule = policy.decide(rules, account, "sshd")
        nss.user(user)
        return rule

    for variant, cache in caches.items():
        first_ms, rule = _time(lambda: decision(cache), 1)
        if rule is None or rule.line != out[variant]["rules"] + 1:
            raise RuntimeError(f"wrong decision ({variant}): {rule}")
        out[variant]["first_ms"] = first_ms[0]
    account = policy.account(user)
    rng = random.Random(4)
    names = list(caches)
    for _ in range(repeats):
        rng.shuffle(names)
        for variant in names:
            cache, o = caches[variant], out[variant]
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            decision(cache)
            t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
            o["decision_ms"].append((t1 - t0) / 1e6)
            o["cpu_ms"].append((c1 - c0) / 1e6)
            o["stat_ms"] += _time(cache.rules, 1)[0]
            o["account_ms"] += _time(lambda: policy.account(user), 1)[0]
            rules = cache.rules()
            o["decide_ms"] += _time(lambda: policy.decide(rules, account, "sshd"), 1)[0]
    for variant, cache in caches.items():
        out[variant]["gids"] = len(account.gids)
        out[variant]["profile"] = _profile(lambda: decision(cache))
    return out


def _round_trip(lab, nss, big, small, user, rounds):
    """`open` through a helper with the 10 000-rule file and one with the
    matching line only, side by side."""
    say(f"P4: `open` round trips, 10 000-rule vs 1-rule policy, {rounds} shuffled rounds")
    helpers = {"big": Helper(lab, big, suffix="k", wrap=nss.wrap).start(),
               "small": Helper(lab, small, suffix="s", wrap=nss.wrap).start()}
    args = []
    for name, helper in helpers.items():
        args += [name, helper.root_socket, lab.cgroup("p4", name)]
    try:
        proc = subprocess.run([PY, "-c", OPEN_CLIENT, user, "sshd", str(rounds), "8", *args],
                              capture_output=True, text=True, cwd="/", timeout=300,
                              preexec_fn=join_cgroup(lab.cgroup("p4", "start")))
    finally:
        for helper in helpers.values():
            helper.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"P4 round-trip client failed:\n{proc.stderr}")
    res = json.loads(proc.stdout)
    bad = {k: [v for v in vals if v[1] != "placed"] for k, vals in res.items()}
    if any(bad.values()):
        raise RuntimeError(f"P4: not every open placed the client: {bad}")
    ms = {k: [v[0] for v in vals] for k, vals in res.items()}
    diffs = [a - b for a, b in zip(ms["big"], ms["small"])]
    return {"ms": ms, "diff_ms": median(diffs), "diff_ci": bootstrap_ci(diffs), "rounds": rounds}


def _decisions_in_namespace(nss, paths, user, repeats):
    """_decisions() in a python3 inside the private NSS namespace (this file, run as a script)."""
    argv = [PY, "-B", os.path.abspath(__file__), "decisions", user, str(repeats)]
    argv += [f"{variant}={path}" for variant, path in paths.items()]
    # wrap() writes /etc/group afresh: past nss._RACY (2 s) the group-name cache
    # holds, as on a host whose group file is not being edited.
    argv = ["sh", "-c", 'sleep 2.5 && exec "$@"', "sh", *argv]
    proc = subprocess.run(nss.wrap(argv), capture_output=True, text=True, cwd="/", timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"P4 decision run failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def bench(lab, repeats=30, rounds=40):
    run = lab.run
    nss = PrivateNss(run)
    members = [nss.add_group(run.name(f"g{i:04d}"))[0] for i in range(MEMBER_GROUPS)]
    others = [nss.add_group(run.name(f"o{i:03d}"))[0] for i in range(OTHER_GROUPS)]
    user = nss.add_user(run.name("m"), member_of=members)
    say(f"P4: private /etc/passwd + /etc/group: {len(members) + len(others)} groups, a user in {len(members)}")

    nss.write()
    out = {"etc_group_lines": nss.lines()}
    paths, counts = {}, {}
    for variant, unknown in (("known", None), ("unknown", run.name("z"))):
        paths[variant] = os.path.join(run.dir, f"p4-{variant}.conf")
        counts[variant] = _write_rules(paths[variant], user, members, others, lab.target, unknown)
    say(f"P4: helper-side decision, known and unknown groups, {repeats} interleaved rounds")
    out.update(_decisions_in_namespace(nss, paths, user, repeats))
    for variant, count in counts.items():
        if out[variant]["rules"] != count:
            raise RuntimeError(f"parsed {out[variant]['rules']} rules, wrote {count}")
    out["groups"] = out["known"]["gids"]
    if out["groups"] != MEMBER_GROUPS + 1:
        raise RuntimeError(f"NSS shows {out['groups']} groups for {user}, expected {MEMBER_GROUPS + 1}")
    small = lab.write("p4-small.conf", f"# bench P4: the matching line alone\n"
                                       f"@{members[-1]}  {lab.target}  plain services=sshd\n")
    out["round_trip"] = _round_trip(lab, nss, os.path.join(run.dir, "p4-known.conf"), small, user, rounds)
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["decisions"]:
    print(json.dumps(_decisions(dict(a.split("=", 1) for a in sys.argv[4:]), sys.argv[2], int(sys.argv[3]))))
