#!/usr/bin/python3
"""Run the real `su` on a pseudo-terminal, as a user at a terminal would, and
answer its password prompt. Used by tests/vm inside a login session (as the
logged-in user); not a test module (tests/vm/vm_*.py are helpers).

    PVSU_PASSWORD=SECRET vm_su.py USER COMMAND

runs `/bin/su USER -c COMMAND` with this process's environment as it is
(PATH included: that is the point of some tests), types SECRET at the
"Password:" prompt, and prints one JSON object: {"rc": exit status,
"output": what su and COMMAND wrote to the terminal, "prompted": bool}.
The password is taken out of the environment before su starts. Stdlib only.
"""

import json
import os
import pty
import select
import sys
import time

TIMEOUT = 90


def main():
    user, command = sys.argv[1], sys.argv[2]
    secret = os.environ.pop("PVSU_PASSWORD", "")
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execv("/bin/su", ["su", user, "-c", command])
        finally:
            os._exit(127)
    out, prompted = b"", False
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:             # EIO: the other side is closed
            break
        if not chunk:
            break
        out += chunk
        if not prompted and b"assword:" in out:
            os.write(fd, secret.encode() + b"\n")
            prompted = True
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    rc = os.waitstatus_to_exitcode(status)
    print(json.dumps({"rc": rc, "prompted": prompted,
                      "output": out.decode(errors="replace").replace("\r\n", "\n")}), flush=True)


if __name__ == "__main__":
    main()
