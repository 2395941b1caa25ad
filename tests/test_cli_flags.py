"""The train flags are generated from TrainConfig: one per field, its defaults, and the old spellings."""

import dataclasses

from ddpm_fast import cli
from ddpm_fast.train import TrainConfig


def parse(*argv):
    return cli.train_config(cli.build_parser().parse_args(["train", *argv]))


def test_every_config_field_is_one_flag_with_the_config_default():
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # the train subcommand's parser
    dests = [a.dest for a in train._actions if a.dest not in ("help", "resume")]
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted(set(dests)) == sorted(fields)
    assert dests.count("use_convnext") == 2 and all(dests.count(f) == 1 for f in fields if f != "use_convnext")
    assert parse() == TrainConfig()
    help_text = train.format_help()
    for name in fields:
        assert "--" + name.replace("_", "-") in help_text, name


def test_flags_set_their_fields():
    config = parse("--dim-mults", "1,2", "--no-use-convnext", "--resnet-block-groups", "4", "--beta-schedule",
                   "cosine", "--loss-type", "l2", "--no-accelerate", "--hflip", "--ema-decay", "0.99",
                   "--dist-timeout-s", "30", "--out-dir", "runs/a", "--num-samples", "4")
    assert config == TrainConfig(dim_mults=(1, 2), use_convnext=False, resnet_block_groups=4,
                                 beta_schedule="cosine", loss_type="l2", accelerate=False, hflip=True,
                                 ema_decay=0.99, dist_timeout_s=30.0, out_dir="runs/a", num_samples=4)


def test_old_spellings_are_aliases():
    old = parse("--resnet", "--groups", "4", "--schedule", "cosine", "--loss", "l2", "--save-every", "7",
                "--out", "runs/a", "--dist-timeout", "30")
    new = parse("--no-use-convnext", "--resnet-block-groups", "4", "--beta-schedule", "cosine", "--loss-type",
                "l2", "--save-and-sample-every", "7", "--out-dir", "runs/a", "--dist-timeout-s", "30")
    assert old == new
