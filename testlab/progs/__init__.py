"""Programs the tests and the benchmarks run in a child (inside a cgroup or a
network namespace, as another user): one module each, so they can be read
and linted. source(NAME) is the text a caller passes with `python3 -c` (the
child then needs no access to the checkout, which may sit below a directory
only root can enter); root may also run one with `python3 -m testlab.progs.NAME`.
Each says who runs it and what it prints.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def source(name):
    """The text of testlab/progs/NAME.py."""
    with open(os.path.join(HERE, f"{name}.py")) as f:
        return f.read()
