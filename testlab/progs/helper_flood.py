"""From tests/helper_attacks.py (FLOOD): Run as the flooding user, 32 at once:
connect/close churn, held-open connections, garbage and `place` requests,
round robin, until stdin closes; then prints what it got (outcome -> count).
"""

import json, os, random, select, socket, sys
from pam_vrf import client
path, vrf = sys.argv[1], sys.argv[2]
counts, held = {}, []

def note(key):
    counts[key] = counts.get(key, 0) + 1

def outcome(raw):
    try:
        answer = json.loads(raw)
    except ValueError:
        return "bad answer"
    return "ok" if answer.get("ok") else answer.get("error", "?").split(":")[0]

print("flooding", flush=True)
i = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    kind, i = i % 4, i + 1
    try:
        if kind == 0:                       # connect, close
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.setblocking(False)
            try:
                s.connect(path)
            finally:
                s.close()
            note("churn")
        elif kind == 1:                     # keep up to 8 silent connections open
            for s in select.select(held, [], [], 0)[0] if held else []:
                try:
                    note("held: " + outcome(s.recv(65536)))
                except OSError as e:
                    note("held: " + type(e).__name__)
                s.close()
                held.remove(s)
            if len(held) < 8:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.setblocking(False)
                try:
                    s.connect(path)
                    held.append(s)
                except OSError:
                    s.close()
        elif kind == 2:                     # garbage
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.settimeout(10)
                s.connect(path)
                s.send(os.urandom(random.choice((0, 1, 100, 4096, 5000))))
                note("garbage: " + outcome(s.recv(65536)))
        else:                               # pam-vrf exec, as the product does it
            answer = client.request({"op": "place", "vrf": vrf}, path, 10)
            note("place: " + ("ok" if answer.get("ok") else answer.get("error", "?").split(":")[0]))
    except client.HelperError as e:
        note("place: " + str(e)[:40])
    except OSError as e:
        note(type(e).__name__)
print(json.dumps(counts), flush=True)
