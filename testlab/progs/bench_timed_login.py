"""From bench/bench_login.py (TIMED): argv: [file, OUT, hook args...]; appends
"import_ns hook_ns verdict cgroup" per session.
"""

# bench: the pam-vrf pam_python entry's work, timed from inside the PAM process
import time

def pam_sm_open_session(pamh, flags, argv):
    t0 = time.perf_counter_ns()
    from pam_vrf import session
    t1 = time.perf_counter_ns()
    verdict = session.hook(pamh.user, pamh.service, argv[2:], {})
    t2 = time.perf_counter_ns()
    with open("/proc/self/cgroup") as f:
        where = f.read().strip().split("::")[-1]
    with open(argv[1], "a") as f:
        f.write(f"{t1 - t0} {t2 - t1} {int(verdict == session.PROCEED)} {where}\n")
    return pamh.PAM_SUCCESS if verdict == session.PROCEED else pamh.PAM_SESSION_ERR

def pam_sm_close_session(pamh, flags, argv):
    return pamh.PAM_SUCCESS
