"""Starting a benchmark's worker as a torchrun job of P processes on this machine (gloo on CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no one listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(script: str | Path, arguments: list[str], processes: int, threads: int | None = None) -> None:
    """``python SCRIPT ARGUMENTS`` in ``processes`` processes under torchrun (torch's and JAX's
    coordinators on free local ports; ``threads``: OMP_NUM_THREADS of each, None: inherited);
    SystemExit with the end of their output when the job fails."""
    env = {**os.environ, "GMENN_JAX_COORDINATOR": f"127.0.0.1:{free_port()}"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()), str(Path(script).resolve()), *arguments,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {processes}-process job failed:\n{(done.stdout + done.stderr)[-4000:]}")
