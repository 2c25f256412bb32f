"""Fault injection for crash/resume tests: ``COMPACT_FAULT=<point>`` kills the process there.

Points are named after apply's step boundaries ("blob-mid:g0", "blob-written:g0",
"blob-done:g0", "bootstrap-mid", "bootstrap-done", "json-done"). SIGKILL, not an exception:
nothing gets a chance to clean up, exactly like a power cut or the OOM killer.
"""

from __future__ import annotations

import os
import signal

ENV = "COMPACT_FAULT"


def fault_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
