"""Data loading (IDX files it writes, broken ones too), a short training run, and the CLI."""

import gzip
import struct

import numpy as np
import pytest
import torch

from ddpm_fast import cli
from ddpm_fast.data import DataError, load_dataset, read_idx
from ddpm_fast.train.record import read_metrics
from ddpm_fast.train import TrainConfig, load_checkpoint, model_from_checkpoint, train


def write_idx(path, array, compress=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_idx_files(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    name = "train-images-idx3-ubyte" + (".gz" if compress else "")
    write_idx(tmp_path / name, images, compress)
    data = load_dataset("fashion_mnist", data_dir=tmp_path)
    assert data.images.shape == (10, 1, 28, 28) and data.hflip
    torch.testing.assert_close(data.images, torch.from_numpy(images).float()[:, None] / 127.5 - 1)
    batch = data.images[next(data.step_indices(4, seed=0))]
    assert batch.shape == (4, 1, 28, 28) and batch.min() >= -1 and batch.max() <= 1


def test_truncated_and_wrong_idx_files(tmp_path):
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "full", images)
    raw = (tmp_path / "full").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(DataError, match=r"truncated or corrupt"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad").write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(DataError, match=r"not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(raw)[:30])
    with pytest.raises(DataError, match=r"cannot read IDX data"):
        read_idx(tmp_path / "broken.gz")
    with pytest.raises(DataError, match=r"no train-images-idx3-ubyte\[.gz\]"):
        load_dataset("fashion_mnist", data_dir=tmp_path)


def test_digits_are_the_offline_default():
    data = load_dataset("digits", image_size=16)
    assert data.images.shape == (1797, 1, 16, 16) and not data.hflip
    assert -1 <= data.images.min() < -0.9 and 0.9 < data.images.max() <= 1
    with pytest.raises(ValueError, match=r"dataset='mnist' is not known"):
        load_dataset("mnist")


def test_short_training_run_lowers_the_loss_and_resumes(tmp_path):
    config = TrainConfig(image_size=8, dim=16, dim_mults=(1, 2), batch_size=64, steps=120,
                         log_every=10, save_and_sample_every=60, num_samples=4, timesteps=50,
                         ema_decay=0.9, out_dir=str(tmp_path))
    _, _, history = train(config, progress=False)
    losses = [loss for _, loss in history]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2]), losses
    assert (tmp_path / "sample-1.png").is_file() and (tmp_path / "sample-final.png").is_file()
    assert (tmp_path / "loss-curve.png").stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp"))
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [(row["step"], row["loss"]) for row in rows] == [(s, pytest.approx(l, rel=1e-5)) for s, l in history]
    assert all(row["lr"] == 1e-3 and row["images_per_s"] > 0 for row in rows)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["step"] == 120 and checkpoint["ema"] is not None
    config.steps = 130
    _, _, resumed = train(config, resume=True, progress=False)
    assert resumed[: len(history)] == history and resumed[-1][0] == 120
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 130


def test_no_accelerate_trains_the_pure_reference(tmp_path):
    config = TrainConfig(image_size=8, dim=8, dim_mults=(1, 2), batch_size=16, steps=1,
                         num_samples=4, timesteps=10, accelerate=False, out_dir=str(tmp_path))
    model, diffusion, _ = train(config, progress=False)
    assert not diffusion.fused
    assert not any(type(m).__name__.startswith("Fused") for m in model.modules())


def test_cli_train_sample_animate_noise(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--image-size", "8", "--dim", "8", "--dim-mults", "1,2", "--steps", "3",
                     "--timesteps", "10", "--batch-size", "16", "--out", str(out)]) == 0
    ckpt = str(out / "checkpoint.pt")
    assert cli.main(["sample", "--checkpoint", ckpt, "--num", "4", "--out", str(tmp_path / "s.png"),
                     "--gif", str(tmp_path / "s.gif")]) == 0
    assert cli.main(["animate", "--checkpoint", ckpt, "--grid", "--out", str(tmp_path / "g.gif")]) == 0
    assert cli.main(["noise", "--out", str(tmp_path / "n.png")]) == 0
    for name in ("s.png", "s.gif", "g.gif", "n.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_cli_help_describes_every_command(capsys):
    for command in ("train", "sample", "noise", "animate"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "usage: ddpm-fast " + command in capsys.readouterr().out


def test_train_help_explains_batch_size_and_the_training_record(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--batch-size is the global batch", "torchrun --nproc_per_node",
                   "metrics.csv a row every --log-every steps: step, loss", "lr, images_per_s",
                   "loss-curve.png the loss column against step", "--precision {fp32,bf16,fp16}",
                   "--grad-accum K", "--compile"):
        assert phrase in text, phrase


def test_cli_sample_and_animate_take_the_sampler_options(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--image-size", "8", "--dim", "8", "--dim-mults", "1,2", "--steps", "3",
                     "--timesteps", "20", "--batch-size", "16", "--out", str(out)]) == 0
    ckpt = str(out / "checkpoint.pt")
    assert cli.main(["sample", "--checkpoint", ckpt, "--num", "4", "--sampler", "ddim", "--steps", "5", "--eta", "0",
                     "--out", str(tmp_path / "ddim.png"), "--gif", str(tmp_path / "ddim.gif")]) == 0
    assert cli.main(["animate", "--checkpoint", ckpt, "--sampler", "dpm-solver++", "--steps", "4",
                     "--timestep-spacing", "linspace", "--out", str(tmp_path / "dpm.gif")]) == 0
    for name in ("ddim.png", "ddim.gif", "dpm.gif"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert cli.main(["sample", "--checkpoint", ckpt, "--sampler", "ddim", "--steps", "50"]) == 2
    assert "steps must be an integer in [1, 20]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    assert "usage: ddpm-fast evaluate" in capsys.readouterr().out


def test_a_v_prediction_run_records_its_target_and_samples_with_it(tmp_path, capsys):
    out = tmp_path / "v"
    assert cli.main(["train", "--image-size", "8", "--dim", "8", "--dim-mults", "1,2", "--steps", "3",
                     "--timesteps", "20", "--batch-size", "16", "--prediction-type", "v_prediction",
                     "--min-snr-gamma", "5", "--out-dir", str(out)]) == 0
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["diffusion"]["prediction_type"] == "v_prediction"
    assert checkpoint["config"]["prediction_type"] == "v_prediction" and checkpoint["config"]["min_snr_gamma"] == 5.0
    _, diffusion, _ = model_from_checkpoint(checkpoint)
    assert diffusion.prediction_type == "v_prediction"
    ckpt = str(out / "checkpoint.pt")
    assert cli.main(["sample", "--checkpoint", ckpt, "--num", "4", "--sampler", "sde-dpm-solver++", "--steps", "5",
                     "--thresholding", "--dynamic-thresholding-ratio", "0.9", "--out", str(tmp_path / "v.png")]) == 0
    assert cli.main(["sample", "--checkpoint", ckpt, "--num", "4", "--sampler", "ddim", "--steps", "5",
                     "--clip-sample", "--use-clipped-model-output", "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "v.png").stat().st_size > 0 and (tmp_path / "c.png").stat().st_size > 0
    # An old checkpoint, without prediction_type, was an epsilon model.
    del checkpoint["diffusion"]["prediction_type"]
    assert model_from_checkpoint(checkpoint)[1].prediction_type == "epsilon"
    capsys.readouterr()
    assert cli.main(["sample", "--checkpoint", ckpt, "--sampler", "ddpm", "--use-clipped-model-output"]) == 2
    assert "use_clipped_model_output is DDIM's" in capsys.readouterr().err
    assert cli.main(["sample", "--checkpoint", ckpt, "--sampler", "ddim", "--steps", "5", "--thresholding",
                     "--dynamic-thresholding-ratio", "1.5"]) == 2
    assert "dynamic_thresholding_ratio must lie in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--prediction-type", "x0", "--out-dir", str(out)])
    assert "invalid choice: 'x0'" in capsys.readouterr().err
