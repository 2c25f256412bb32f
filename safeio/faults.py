"""Fault injection for crash/resume tests: ``COMPACT_FAULT=<point>`` kills the process there.

Points are named after apply's step boundaries ("blob-mid:g0", "blob-written:g0",
"blob-done:g0", "bootstrap-mid", "bootstrap-done", "json-done"), and for image plans after
publishing steps ("publish-blob:N" after the N-th blob, "publish-config", "publish-child-manifest",
"publish-before-tag", "publish-done"). SIGKILL, not an exception:
nothing gets a chance to clean up, exactly like a power cut or the OOM killer.

With ``COMPACT_FAULT_SIGNAL=STOP`` the process stops there instead (a test then delivers a real
Ctrl-C or SIGTERM and continues it), and once continued the thread stalls for STALL seconds as on
a hung disk: work that does not stop when asked shows up as finished.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "COMPACT_FAULT"
SIGNAL_ENV = "COMPACT_FAULT_SIGNAL"
STALL = 3.0


def fault_point(name: str) -> None:
    if os.environ.get(ENV) != name:
        return
    signum = signal.Signals["SIG" + os.environ.get(SIGNAL_ENV, "KILL")]
    os.kill(os.getpid(), signum)
    if signum == signal.SIGSTOP:
        time.sleep(STALL)
