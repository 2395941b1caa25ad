"""Training under torchrun on the CPU (gloo): 2 processes against 1, a DDP checkpoint in a
single-process `sample`, a rank that dies, a run that leaves its process group for good, and how
the data are dealt to the ranks."""

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import jobs
from compare_runs import assert_trained_alike, initial_weights
from ddpm_fast import cli
from ddpm_fast.data import load_dataset
from ddpm_fast.train.distributed import check_same_on_all_ranks, process_group
from ddpm_fast.train.record import METRICS_NAME, read_metrics
from ddpm_fast.train import TrainConfig, load_checkpoint, train

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# 4 optimizer steps of a global batch of 16: under 2 processes with --grad-accum 2, each rank
# runs 2 micro-batches of 4 per step, and DDP all-reduces once per step.
STEPS, BATCH = 4, 16
EMA = 0.9


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    code, output = jobs.run(jobs.TINY + [
        "--batch-size", str(BATCH), "--grad-accum", "2", "--steps", str(STEPS), "--log-every", "1",
        "--save-every", "2", "--ema-decay", str(EMA), "--out", str(out)], nproc=2)
    assert code == 0, output
    return out, output


def test_two_gloo_processes_train_like_one_with_the_combined_batch(ddp_run, tmp_path):
    out, output = ddp_run
    config = dict(image_size=8, dim=8, dim_mults=(1, 2), timesteps=10, device="cpu",
                  batch_size=BATCH, log_every=1, save_and_sample_every=2, ema_decay=EMA,
                  num_samples=4)
    model, _, history = train(TrainConfig(**config, steps=STEPS, out_dir=str(tmp_path / "single")),
                              progress=False)
    ddp = load_checkpoint(out / "checkpoint.pt")
    single = load_checkpoint(tmp_path / "single" / "checkpoint.pt")
    assert list(ddp["model"]) == list(model.state_dict())  # no 'module.' prefix
    # Splitting the batch in four changes float rounding (the reduction orders), no more.
    initial = initial_weights(tmp_path / "initial", **config)
    for key in ("model", "ema"):
        assert_trained_alike(ddp[key], single[key], initial)
    assert [s for s, _ in ddp["history"]] == [s for s, _ in history] == list(range(STEPS))
    torch.testing.assert_close(torch.tensor([loss for _, loss in ddp["history"]]),
                               torch.tensor([loss for _, loss in history]), rtol=1e-5, atol=0)
    # Rank 0 alone prints and records.
    assert output.count("step 0: loss") == 1 and output.count("trained 4 steps") == 1
    assert [row["step"] for row in read_metrics(out / METRICS_NAME)] == list(range(STEPS))
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt", "loss-curve.png", METRICS_NAME, "sample-1.png", "sample-final.png"]


def test_a_ddp_checkpoint_samples_in_a_single_process(ddp_run, tmp_path):
    out, _ = ddp_run
    grid = tmp_path / "samples.png"
    assert cli.main(["sample", "--checkpoint", str(out / "checkpoint.pt"), "--num", "4",
                     "--device", "cpu", "--out", str(grid)]) == 0
    assert grid.stat().st_size > 0


@linux_only
def test_a_rank_that_dies_ends_the_job_which_resumes_on_every_rank(tmp_path):
    out = tmp_path / "job"
    args = jobs.TINY + ["--batch-size", "16", "--log-every", "1", "--save-every", "3",
                        "--out", str(out)]
    job = jobs.start(args + ["--steps", "1000000"], nproc=2)
    jobs.wait_for(lambda: (out / "checkpoint.pt").is_file(), job, 120, "the first checkpoint")
    ranks = jobs.children_by_rank(job.pid)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGKILL)
    killed = time.monotonic()
    code, output = jobs.finish(job, timeout=60)
    assert code != 0
    assert time.monotonic() - killed < 30, "the job hung after a rank died"
    # torchrun's summary names the rank that failed first, and how.
    assert "Root Cause (first observed failure)" in output, output[-3000:]
    root_cause = output.split("Root Cause (first observed failure)")[1]
    assert "rank      : 1" in root_cause and "SIGKILL" in root_cause, root_cause

    # Both ranks resume from rank 0's checkpoint and end where one uninterrupted process does.
    steps = load_checkpoint(out / "checkpoint.pt")["step"] + 4
    code, output = jobs.run(args + ["--steps", str(steps), "--resume"], nproc=2)
    assert code == 0, output
    config = dict(image_size=8, dim=8, dim_mults=(1, 2), timesteps=10, device="cpu",
                  batch_size=16, log_every=1, save_and_sample_every=3, num_samples=4)
    model, _, _ = train(TrainConfig(**config, steps=steps, out_dir=str(tmp_path / "whole")),
                        progress=False)
    resumed = load_checkpoint(out / "checkpoint.pt")
    assert resumed["step"] == steps
    assert_trained_alike(resumed["model"], model.state_dict(),
                         initial_weights(tmp_path / "initial", **config))
    assert [row["step"] for row in read_metrics(out / METRICS_NAME)] == list(range(steps))


def test_ranks_share_out_each_global_batch_whatever_their_number():
    data = load_dataset("digits", image_size=8)
    one = data.step_indices(48, seed=3)
    two = [data.step_indices(48, rank=r, world_size=2, seed=3) for r in range(2)]
    steps_per_epoch = len(data) // 48
    for step in range(steps_per_epoch + 2):  # across an epoch boundary
        whole = next(one)
        halves = [next(rank) for rank in two]
        # Image j of rank r is image 2j + r of the global batch.
        assert torch.equal(torch.stack(halves, 1).reshape(-1), whole), step
        assert len(set(whole.tolist())) == 48
    # Starting at a step gives what running up to it would have given.
    later = data.step_indices(48, rank=1, world_size=2, seed=3, start_step=steps_per_epoch + 2)
    assert torch.equal(next(later), next(two[1]))


def test_the_global_batch_must_split_evenly(tmp_path):
    config = TrainConfig(image_size=8, dim=8, dim_mults=(1, 2), batch_size=10, grad_accum=4,
                         steps=1, out_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"batch_size=10 \(the global batch\) must be a multiple .* of 4"):
        train(config, progress=False)
    config.grad_accum = 0
    with pytest.raises(ValueError, match=r"grad_accum must be a positive integer, got 0"):
        train(config, progress=False)


def _compare_drifted_weights(rank, port):
    # One rank of a 2-process gloo job, set up as torchrun would, through the environment.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.manual_seed(rank)  # different weights on each rank
    weights = torch.nn.Linear(4, 4)
    with process_group(torch.device("cpu"), timeout_s=60) as ctx:
        assert (ctx.rank, ctx.world_size, ctx.is_main) == (rank, 2, rank == 0)
        check_same_on_all_ranks(ctx, weights, "the EMA weights")


def _free_port():
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(fn, *args, timeout=120):
    """Run ``fn(rank, *args)`` in 2 spawned processes; re-raise the first rank's exception."""
    job = mp.start_processes(fn, args=args, nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not job.join(timeout=1):
            assert time.monotonic() < deadline, "the 2-process job hung"
    finally:
        for process in job.processes:
            if process.is_alive():
                process.kill()


def _gloo_threads():
    return [name for name in (Path(f"/proc/self/task/{t}/comm").read_text().strip()
                              for t in os.listdir("/proc/self/task")) if "gloo" in name]


def _train_then_count_gloo_threads(rank, port, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    train(TrainConfig(image_size=8, dim=8, dim_mults=(1, 2), timesteps=10, device="cpu",
                      batch_size=8, steps=2, log_every=1, save_and_sample_every=2, num_samples=4,
                      out_dir=out_dir), progress=False)
    # A process group that outlives its run keeps gloo's worker threads running into the
    # interpreter's shutdown, where one that drops the last reference to a tensor waits for
    # the GIL and aborts the process ("terminate called without an active exception").
    assert _gloo_threads() == [], f"rank {rank}: the process group outlived the run"


@linux_only
def test_a_distributed_run_leaves_no_gloo_thread_behind(tmp_path):
    _run_two_ranks(_train_then_count_gloo_threads, _free_port(), str(tmp_path))


def test_ranks_that_drifted_apart_refuse_to_checkpoint():
    # (Ranks that agree pass this check before every checkpoint of the torchrun runs above.)
    with pytest.raises(mp.ProcessRaisedException,
                       match=r"the EMA weights differ between rank 0 and rank\(s\) \[1\]"):
        _run_two_ranks(_compare_drifted_weights, _free_port())
