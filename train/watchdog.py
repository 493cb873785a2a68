"""A rank's watchdog: a rank that makes no progress for `trainer.hang_timeout` seconds (no step, checkpoint or
evaluation finished; a peer that stopped leaves this rank waiting in a collective) writes every thread's Python
stack to stderr and exits with code 1, so the launcher ends the other ranks and a scheduler that requeues
failed jobs (Slurm's `--requeue`) starts the run again from its last checkpoint.

It is `faulthandler.dump_traceback_later`: a C thread, so it fires even when the main thread is blocked in a
collective or in C code holding the GIL.
"""

from __future__ import annotations

import faulthandler
import sys


class Watchdog:
    def __init__(self, timeout: float):
        self.timeout = float(timeout)
        self.beat()

    def beat(self, allow: float = 1.0) -> None:
        """Progress was made; the next must come within `allow` x the timeout (checkpoints and evaluations
        are given longer than a step)."""
        if self.timeout > 0:
            faulthandler.dump_traceback_later(self.timeout * allow, exit=True, file=sys.stderr)

    def close(self) -> None:
        if self.timeout > 0:
            faulthandler.cancel_dump_traceback_later()
