"""Small shared helpers."""
import sys
import time

_T0 = time.time()


class LabError(Exception):
    """A failure to run the lab at all (setup, environment), as opposed to a scenario failing."""


class Skip(Exception):
    """A check that cannot be made here (reported as SKIP, never as a pass)."""


def log(msg, end="\n"):
    sys.stderr.write("[%7.2f] %s%s" % (time.time() - _T0, msg, end))
    sys.stderr.flush()
