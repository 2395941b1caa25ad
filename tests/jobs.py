"""``ddpm-fast train`` in child processes, alone or under torchrun, that can never hang a test
run: every job runs in its own process group, which is killed whole at its deadline."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The tiny configuration of the tests: 8x8 digits, a 2-level U-Net of 8 channels, T = 10.
TINY = ["--image-size", "8", "--dim", "8", "--dim-mults", "1,2", "--timesteps", "10",
        "--device", "cpu"]


def train_command(args, nproc=None):
    """The command line of ``ddpm-fast train args``, under torchrun with ``nproc`` processes."""
    if nproc is None:
        return [sys.executable, "-m", "ddpm_fast.cli", "train", *args]
    # --standalone: a rendezvous on localhost with a free port, so parallel test runs never clash.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "ddpm_fast.cli", "train", *args]


def start(args, nproc=None):
    """Start a training job; its output (stdout and stderr together) goes to a pipe."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process: 2 ranks on 2 cores
    return subprocess.Popen(train_command(args, nproc), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


def finish(job, timeout):
    """Wait for ``job``; returns (exit code, output). Past ``timeout`` seconds, kills the job's
    whole process group (launcher and ranks) and fails the test."""
    try:
        output, _ = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        output, _ = job.communicate()
        pytest.fail(f"the job did not end within {timeout} s; its output:\n{output[-4000:]}")
    return job.returncode, output


def run(args, nproc=None, timeout=180):
    """Run a training job to its end; returns (exit code, output)."""
    return finish(start(args, nproc), timeout)


def wait_for(condition, job, timeout, what):
    """Poll ``condition()`` until it holds; fail (killing the job) if the job ends or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if job.poll() is not None or time.monotonic() > deadline:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
            output, _ = job.communicate()
            pytest.fail(f"waited in vain for {what}; the job's output:\n{output[-4000:]}")
        time.sleep(0.02)


def children_by_rank(pid):
    """The processes whose parent is ``pid`` (torchrun's ranks), keyed by their RANK."""
    ranks = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != pid:  # field 4 of /proc/<pid>/stat, the parent's pid
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):  # the process ended meanwhile
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                ranks[int(item[5:])] = int(proc.name)
    return ranks
