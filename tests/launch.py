"""Several "nodes" on one machine: one process per node, started as a cluster's launcher
(torchrun, SLURM) would start them, so that Lightning's multi-node code paths run for real.

Each process gets the variables Lightning's ``LightningEnvironment`` reads: ``NODE_RANK``,
``LOCAL_RANK`` (0: one process per node), ``WORLD_SIZE``, ``MASTER_ADDR`` (127.0.0.1) and a
free ``MASTER_PORT``. Its ``Trainer`` must ask for ``num_nodes=nodes, devices=1`` (on the CPU,
gloo). With ``LOCAL_RANK`` set Lightning starts no processes of its own: the ranks are these.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_nodes(
    arguments: list[str], nodes: int, cwd: Path, timeout: float = 240
) -> list[subprocess.CompletedProcess]:
    """Run ``python ARGUMENTS`` once per node, all at once, this checkout first on the import
    path; returns each node's finished process (stdout and stderr captured), node 0 first.

    Raises:
        AssertionError: naming the node and showing the end of its output, when one exits
            with an error (the others are waited for first, or killed at ``timeout``).
    """
    port = free_port()
    processes = []
    for node in range(nodes):
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "NODE_RANK": str(node),
            "LOCAL_RANK": "0",
            "WORLD_SIZE": str(nodes),
        }
        command = [sys.executable, *arguments]
        processes.append(
            subprocess.Popen(
                command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    finished = []
    for node, process in enumerate(processes):
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise AssertionError(f"node {node} of {nodes} did not finish in {timeout} s") from None
        finished.append(
            subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        )
    for node, result in enumerate(finished):
        if result.returncode != 0:
            raise AssertionError(
                f"node {node} of {nodes} exited with {result.returncode}:\n{result.stderr[-3000:]}"
            )
    return finished
