"""``--nproc N`` on one machine: N copies of a module's command, wired together by torchrun's env vars.

Each copy gets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, exactly what ``torchrun``
sets, so the command itself cannot tell the two launchers apart; multi-node runs use ``torchrun``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: a worker gets SIGTERM when the launcher dies, even by SIGKILL, so no orphan holds the port.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(module: str, argv: Sequence[str], nproc: int, share_cores: bool = False) -> int:
    """Run ``python -m module *argv`` in ``nproc`` processes; returns the first failure's status.

    ``share_cores``: without OMP_NUM_THREADS in the environment each process gets ``cores // nproc``
    threads (torchrun gives each one), so N processes share the cores instead of oversubscribing them.
    """
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(nproc),
    }
    if share_cores:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        for rank in range(nproc)
    ]
    status = 0
    try:
        while procs:
            for p in list(procs):
                code = p.poll()
                if code is None:
                    continue
                procs.remove(p)
                if code and not status:
                    status = code
                    for other in procs:  # one rank failed: the collectives of the others would hang
                        other.terminate()
            time.sleep(0.2)
    finally:
        for p in procs:
            p.kill()
    return status
