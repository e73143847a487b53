"""How long each process waited for an RCU grace period before its cgroup move.

Runs COMMAND while the kernel traces every blocking context switch with its
stack (tracefs: sched_switch with a stacktrace trigger, and sched_wakeup),
then reports, per command name, the waits that began in rcu_sync_enter():
the cgroup_threadgroup_rwsem write lock a cgroup.procs write takes, which
waits for a whole grace period unless another move happened moments before
(cgroup2 mounted without favordynmods). No kprobes needed (this kernel has
none); tracefs is put back as it was.

    python3 bench/rcu_waits.py -- python3 bench/bench_login_c.py --rounds 6     (root)

P1-C found this way: the helper's moves waited a median 10.4 ms, the C
mover's own 6.6 ms (bench_login_c after 50 ms of quiet, 2026-12-07).
"""

import os
import re
import statistics
import subprocess
import sys

TRACING = "/sys/kernel/tracing"
EVENTS = ("sched/sched_switch", "sched/sched_wakeup")
SWITCH = re.compile(r"\s([\d.]+): sched_switch: prev_comm=(.+?) prev_pid=(\d+) .*prev_state=D")
WAKEUP = re.compile(r"\s([\d.]+): sched_wakeup: comm=.+? pid=(\d+) ")


def _write(name, value):
    with open(os.path.join(TRACING, name), "w") as f:
        f.write(value)


def _read(name):
    with open(os.path.join(TRACING, name)) as f:
        return f.read()


def _clear_trigger():
    try:
        _write("events/sched/sched_switch/trigger", "!stacktrace")
    except OSError:
        pass            # there was none


def waits(trace):
    """{command name: [milliseconds]} of the blocking waits that began in rcu_sync_enter()."""
    lines, found, pending = trace.splitlines(), {}, {}
    i = 0
    while i < len(lines):
        switched = SWITCH.search(lines[i])
        if switched:
            stack, j = [], i + 2            # the next line is "<stack trace>"
            while j < len(lines) and lines[j].startswith(" =>"):
                stack.append(lines[j][4:].strip())
                j += 1
            if "rcu_sync_enter" in stack:
                pending[switched.group(3)] = (float(switched.group(1)), switched.group(2))
            i = j
            continue
        woken = WAKEUP.search(lines[i])
        if woken and woken.group(2) in pending:
            start, comm = pending.pop(woken.group(2))
            found.setdefault(comm, []).append((float(woken.group(1)) - start) * 1e3)
        i += 1
    return found


def main():
    if "--" not in sys.argv or os.geteuid() != 0:
        sys.exit(__doc__.strip().split("\n\n")[-2].strip())
    command = sys.argv[sys.argv.index("--") + 1:]
    if not os.path.isdir(os.path.join(TRACING, "events")):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACING], check=True)
    saved = {"tracing_on": _read("tracing_on").strip(), "buffer_size_kb": _read("buffer_size_kb").strip()}
    try:
        _write("tracing_on", "0")
        _write("trace", "")
        _write("buffer_size_kb", "16384")
        _write("events/sched/sched_switch/filter", "prev_state != 0")
        _clear_trigger()
        _write("events/sched/sched_switch/trigger", "stacktrace")
        for event in EVENTS:
            _write(f"events/{event}/enable", "1")
        _write("tracing_on", "1")
        rc = subprocess.run(command).returncode
        _write("tracing_on", "0")
        found = waits(_read("trace"))
    finally:
        _write("tracing_on", "0")
        for event in EVENTS:
            _write(f"events/{event}/enable", "0")
        _clear_trigger()
        _write("events/sched/sched_switch/filter", "0")
        _write("trace", "")
        for name, value in saved.items():
            _write(name, value)
    print("waits for an RCU grace period before a cgroup move (rcu_sync_enter):")
    for comm, ms in sorted(found.items()):
        print(f"  {comm:16s} {len(ms):4d} waits, median {statistics.median(ms):6.2f} ms, "
              f"min {min(ms):6.2f}, max {max(ms):6.2f}")
    if not found:
        print("  none (favordynmods on, or every move came moments after another)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
