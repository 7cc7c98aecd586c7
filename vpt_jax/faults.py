"""Named points where a test can kill the process, to prove that no kill window loses a record.

`VPT_JAX_KILL_AT=name` (or `name:n`, the n-th time the point is reached, default 1) makes the
process SIGKILL itself at that point: a real kill, with no clean-up, as a power cut or an
out-of-memory killer would. Unset (always, outside the tests), a point costs one dictionary read.

Points: `metrics_row` (an epoch's record written, its checkpoint not yet), `checkpoint` (the
checkpoint written, the next epoch not started), `artifact` (a run's artifact written, its
result.json not yet), `claim_temp` (a claim's content written to its temporary file, the claim
not yet created).
"""

from __future__ import annotations

import os
import signal

_reached: dict[str, int] = {}


def point(name: str) -> None:
    """Kills this process here if `VPT_JAX_KILL_AT` names this point (and its count is reached)."""
    spec = os.environ.get("VPT_JAX_KILL_AT")
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
