"""Nothing lost on failure: a training process killed mid-way resumes to the weights of an
uninterrupted run, and a checkpoint write that fails leaves the previous checkpoint whole."""

import signal

import pytest
import torch

import jobs
from ddpm_fast.train import checkpoint as checkpoint_module
from ddpm_fast.train.record import METRICS_NAME, read_metrics
from ddpm_fast.train import load_checkpoint, save_checkpoint


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    killed = tmp_path / "killed"
    args = jobs.TINY + ["--batch-size", "16", "--log-every", "1", "--save-every", "5",
                        "--ema-decay", "0.9", "--out", str(killed)]
    # A run far too long to finish, killed once it has written a checkpoint.
    job = jobs.start(args + ["--steps", "1000000"])
    jobs.wait_for((killed / "checkpoint.pt").is_file, job, 120, "the first checkpoint")
    job.send_signal(signal.SIGKILL)
    jobs.finish(job, timeout=30)
    saved_at = load_checkpoint(killed / "checkpoint.pt")["step"]
    print(f"killed with a checkpoint at step {saved_at}, after logging step "
          f"{read_metrics(killed / METRICS_NAME)[-1]['step']}")

    steps = saved_at + 7  # the resumed run crosses another checkpoint
    code, output = jobs.run(args + ["--steps", str(steps), "--resume"])
    assert code == 0, output
    resumed = load_checkpoint(killed / "checkpoint.pt")

    whole_args = [a if a != str(killed) else str(tmp_path / "whole") for a in args]
    code, output = jobs.run(whole_args + ["--steps", str(steps)])
    assert code == 0, output
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    assert resumed["step"] == whole["step"] == steps
    # The same operations on the same numbers. Compared to 1e-6, not to the last bit: a kernel
    # may vary in the last bit from call to call (the CPU GroupNorm(1) backward on channels_last
    # input did, before be8ec17). A resume that lost the data position, the noise or the
    # optimizer state would be off by about lr = 1e-3.
    assert [s for s, _ in resumed["history"]] == [s for s, _ in whole["history"]]
    torch.testing.assert_close([loss for _, loss in resumed["history"]],
                               [loss for _, loss in whole["history"]], rtol=1e-6, atol=0)
    for key in ("model", "ema"):
        for name, value in whole[key].items():
            torch.testing.assert_close(resumed[key][name], value, rtol=0, atol=1e-6,
                                       msg=lambda m, k=key, n=name: f"{k} {n}: {m}")
    # The record holds each step once: the rows logged after the checkpoint were dropped.
    assert [row["step"] for row in read_metrics(killed / METRICS_NAME)] == list(range(steps))


def test_a_checkpoint_write_that_fails_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "weights": torch.ones(3)})

    def dies_mid_write(state, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as Ctrl-C, or any failure, mid-write

    monkeypatch.setattr(checkpoint_module.torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    checkpoint = load_checkpoint(path)
    assert checkpoint["step"] == 1 and torch.equal(checkpoint["weights"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no partial file left
