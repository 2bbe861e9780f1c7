"""Why live tracing cannot run here, said in one line with what to do about it."""
from __future__ import annotations

INSTALL_HINT = ("on Debian/Ubuntu: apt install python3-bpfcc linux-headers-$(uname -r) "
                "(or run .ci/install-live.sh)")


class LiveUnavailable(RuntimeError):
    """This host cannot record: the message says what is missing and how to get it."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.problem = problem
        self.fix = fix
