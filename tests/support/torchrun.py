"""Starting test workers as a torchrun job on this machine (gloo on CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(script: Path, arguments: list[str], processes: int, timeout: float = 240) -> None:
    """Run the Python file ``script`` in ``processes`` processes under torchrun; AssertionError
    with the end of their output when the job fails."""
    env = {**os.environ, "GMENN_JAX_COORDINATOR": f"127.0.0.1:{free_port()}", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script), *arguments,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
