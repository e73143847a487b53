"""From bench/bench_policy.py (OPEN_CLIENT): Root, Debian's python3: argv user
service rounds seed then NAME ROOT_SOCK BASE_CGROUP triples. Prints {"NAME":
[[ms, verdict], ...]}.
"""

import json, os, random, sys, time
from pam_vrf import client, protocol
user, service, rounds, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rest = sys.argv[5:]
targets = [rest[i:i + 3] for i in range(0, len(rest), 3)]
rng = random.Random(seed)
out = {t[0]: [] for t in targets}
me = str(os.getpid())
for r in range(rounds + 2):
    rng.shuffle(targets)
    for name, sock, base in targets:
        with open(base + "/cgroup.procs", "w") as f:     # out again, as a new login would be
            f.write(me)
        time.sleep(0.002)
        t0 = time.perf_counter_ns()
        answer = client.request({"op": "open", "user": user, "service": service}, sock,
                                protocol.LOGIN_TIMEOUT)
        ms = (time.perf_counter_ns() - t0) / 1e6
        if r >= 2:                                          # two warm-up rounds
            out[name].append([ms, answer.get("verdict") or answer.get("error"), answer.get("rule")])
print(json.dumps(out))
