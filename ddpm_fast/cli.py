"""The ``ddpm-fast`` command: train, sample, noise (the q_sample figure), animate and evaluate."""

import argparse
import dataclasses
import json
import os
import sys
import textwrap
import time
import types
import typing
from pathlib import Path

import torch

from .data import DATASETS, DataError, load_dataset
from .diffusion import (BETA_SCHEDULES, DEFAULT_TIMESTEP_SPACING, LOSS_TYPES, PREDICTION_TYPES, SAMPLERS,
                        TIMESTEP_SPACINGS, GaussianDiffusion, make_sampler)
from .train import LOSS_CURVE_NAME, TrainConfig, load_checkpoint, model_from_checkpoint, pick_device, train
from .train.distributed import env_rank
from .train.precision import PRECISIONS
from .train.record import METRICS_NAME
from .evaluate.pictures import plot_noising, save_denoising_gif, save_grid


def _dim_mults(text):
    try:
        mults = tuple(int(m) for m in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4, got {text!r}")
    if not mults or min(mults) < 1:
        raise argparse.ArgumentTypeError(f"expected positive multipliers like 1,2,4, got {text!r}")
    return mults


_TRAIN_EPILOG = f"""\
several processes:
  The same command runs under torchrun, one process per GPU (or per CPU socket):
    torchrun --nproc_per_node 4 -m ddpm_fast.cli train ...
  --batch-size is the global batch: each of N processes takes batch-size / N images a step
  (batch-size / (N * K) per micro-batch with --grad-accum K), so the result does not depend
  on N. Rank 0 alone prints and writes files; --resume loads its checkpoint on every rank.

what --out-dir holds:
  checkpoint.pt      weights (EMA too), optimizer, step; loads in one process or many
  sample-<k>.png     a sample grid every --save-and-sample-every steps, all from the same
                     noise
  {METRICS_NAME}        a row every --log-every steps: step, loss (the mean over the global
                     batch), lr, images_per_s (all processes together, checkpoints and
                     grids left out)
  {LOSS_CURVE_NAME}     the loss column against step, redrawn with every sample grid, on a
                     log scale: each logged loss (noisy: one batch each) and, from 40 rows
                     on, their running mean as a thick line. It should fall steeply, then
                     slowly; a curve that rises, or ends (nan), calls for a lower --lr.
"""


# One flag per TrainConfig field, named after it (dim_mults -> --dim-mults), its type and default
# taken from the dataclass. Here: each field's help, the choices where a known set exists, and
# the flags' old spellings, kept as aliases.
_TRAIN_HELP = {
    "dataset": "digits: scikit-learn's bundled 8x8 digits, offline (default); "
               "fashion_mnist: IDX files in --data-dir or a cached Hugging Face copy",
    "data_dir": "folder with train-images-idx3-ubyte[.gz] (Fashion-MNIST)",
    "download": "let the Hugging Face 'datasets' package download Fashion-MNIST",
    "image_size": "image side (default 16 for digits, 28 for Fashion-MNIST)",
    "hflip": "random horizontal flips (default: on for Fashion-MNIST, off for digits)",
    "dim": "U-Net base channels (default: the image size, as in the blog)",
    "dim_mults": "channel multipliers per resolution, e.g. 1,2,4 (default)",
    "use_convnext": "ConvNeXt blocks (default, the blog's); --no-use-convnext for ResNet blocks",
    "resnet_block_groups": "GroupNorm groups of ResNet blocks (default %(default)s)",
    "timesteps": "diffusion steps T (default %(default)s)",
    "beta_schedule": "beta schedule (default %(default)s)",
    "loss_type": "training loss (default %(default)s)",
    "prediction_type": "what the model predicts: epsilon, the noise (default, the blog's); sample, the clean "
                       "image; v_prediction, v = sqrt(abar) noise - sqrt(1 - abar) x0. The checkpoint records it",
    "min_snr_gamma": "Min-SNR-gamma loss weighting with this gamma, e.g. 5 (default: none, every timestep alike)",
    "batch_size": "global batch: images per optimizer step, over all processes (default %(default)s)",
    "grad_accum": "accumulate gradients over K micro-batches per optimizer step (default 1)",
    "precision": "fp32 (default), or autocast to bf16, or to fp16 with a GradScaler",
    "compile": "torch.compile the model (first steps slower)",
    "lr": "Adam's learning rate (default %(default)g)",
    "steps": "optimizer steps in all (default %(default)s)",
    "log_every": f"log the loss and a {METRICS_NAME} row every N steps (default %(default)s)",
    "save_and_sample_every": "checkpoint and sample grid every N steps (default %(default)s)",
    "num_samples": "images in each sample grid (default %(default)s)",
    "ema_decay": "keep EMA weights with this decay, e.g. 0.995 (default: none)",
    "seed": "RNG seed of the weights, data order, timesteps and noise (default %(default)s)",
    "device": "cpu, cuda, cuda:1, ... (default: cuda when available)",
    "accelerate": "swap in the compiled fused ops (default); --no-accelerate trains the pure-PyTorch reference",
    "out_dir": "results folder (default: %(default)s)",
    "dist_timeout_s": "under torchrun, how long a process waits for the others before the job fails "
                      "(default %(default)g)",
}
_TRAIN_CHOICES = {"dataset": DATASETS, "beta_schedule": sorted(BETA_SCHEDULES), "loss_type": LOSS_TYPES,
                  "prediction_type": PREDICTION_TYPES, "precision": PRECISIONS}
_TRAIN_ALIASES = {"resnet_block_groups": ["--groups"], "beta_schedule": ["--schedule"], "loss_type": ["--loss"],
                  "save_and_sample_every": ["--save-every"], "out_dir": ["--out"],
                  "dist_timeout_s": ["--dist-timeout"]}
_TRAIN_METAVARS = {"data_dir": "DIR", "image_size": "N", "dim": "N", "dim_mults": "M1,M2,...",
                   "resnet_block_groups": "N", "timesteps": "T", "batch_size": "N", "grad_accum": "K", "steps": "N",
                   "ema_decay": "DECAY", "min_snr_gamma": "GAMMA", "log_every": "N", "save_and_sample_every": "N", "num_samples": "N",
                   "out_dir": "DIR", "dist_timeout_s": "SECONDS"}


class _TrainHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Writes a flag with aliases as ``--out-dir, --out DIR`` (the metavar or choices once), and
    wraps help text between words only, never inside a --flag-name."""

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _format_action_invocation(self, action):
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(action.option_strings) + " " + metavar


def _flag(name):
    return "--" + name.replace("_", "-")


def _field_type(field, hints):
    """The argparse type of a TrainConfig field: its annotation without ``| None``."""
    kind = hints[field.name]
    if isinstance(kind, types.UnionType):
        (kind,) = [k for k in kind.__args__ if k is not type(None)]
    return _dim_mults if kind is tuple else kind


def _add_config_flags(p):
    """One flag per TrainConfig field, plus the old spellings as aliases."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        kind = _field_type(field, hints)
        default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
        aliases = _TRAIN_ALIASES.get(field.name, [])
        help = _TRAIN_HELP[field.name] + (f" [old name: {', '.join(aliases)}]" if aliases else "")
        kwargs = dict(dest=field.name, default=default, help=help)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=kind, metavar=_TRAIN_METAVARS.get(field.name))
            if field.name in _TRAIN_CHOICES:
                kwargs.update(choices=_TRAIN_CHOICES[field.name], metavar=None)
        p.add_argument(_flag(field.name), *aliases, **kwargs)
    # The old inverted switch, kept as an alias that stores use_convnext=False.
    p.add_argument("--resnet", dest="use_convnext", action="store_false", default=argparse.SUPPRESS,
                   help="[old name of --no-use-convnext]")


def _add_train(sub):
    p = sub.add_parser("train", help="train a U-Net and write checkpoints and sample grids",
                       description="Train the blog's U-Net with DDPM, in one process or under torchrun.\n"
                       f"Writes checkpoint.pt, sample-*.png, {METRICS_NAME} and {LOSS_CURVE_NAME} into --out-dir.\n"
                       "Every flag but --resume sets the field of ddpm_fast.train.TrainConfig of\n"
                       "the same name; the old spellings, marked [old name], still work.",
                       epilog=_TRAIN_EPILOG, formatter_class=_TrainHelpFormatter)
    _add_config_flags(p)
    p.add_argument("--resume", action="store_true", help="continue from --out-dir/checkpoint.pt")
    p.set_defaults(run=_run_train)


def train_config(args):
    """The TrainConfig that parsed ``train`` flags describe."""
    return TrainConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)})


def _run_train(args):
    config = train_config(args)
    # Under torchrun (which names a file for it), record() hands a failing rank's exception to
    # the launcher, whose summary then names the rank and shows its traceback.
    run = train
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        from torch.distributed.elastic.multiprocessing.errors import record

        run = record(train)
    start = time.perf_counter()
    _, _, history = run(config, resume=args.resume)
    elapsed = time.perf_counter() - start
    if env_rank() == 0:  # rank 0 alone speaks
        print(f"trained {config.steps} steps in {elapsed:.0f} s; last logged loss "
              f"{history[-1][1]:.4f} at step {history[-1][0]}; wrote {Path(config.out_dir) / 'checkpoint.pt'}")


def _add_sampling_args(p):
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by 'ddpm-fast train'")
    p.add_argument("--num", type=int, default=64, help="how many images to sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="default: cuda when available")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA ones")
    p.add_argument("--no-accelerate", action="store_true", help="sample with the reference ops")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm",
                   help="ddpm: the blog's ancestral sampler, all T steps (default); ddim; "
                   "dpm-solver++: second-order multistep, good in 10-20 steps; sde-dpm-solver++: its "
                   "stochastic form")
    p.add_argument("--steps", type=int, help="sampler steps (model evaluations); default: all T")
    p.add_argument("--eta", type=float, default=0.0,
                   help="DDIM's noise scale in [0, 1]: 0 deterministic (default), 1 the DDPM posterior")
    p.add_argument("--timestep-spacing", choices=TIMESTEP_SPACINGS, default=DEFAULT_TIMESTEP_SPACING,
                   help=f"where the steps fall in [0, T), as in diffusers (default: {DEFAULT_TIMESTEP_SPACING})")
    bound = p.add_mutually_exclusive_group()
    bound.add_argument("--clip-sample", action="store_true",
                       help="clamp each step's predicted clean image to [-R, R] (diffusers' clip_sample)")
    bound.add_argument("--thresholding", action="store_true",
                       help="dynamic thresholding of each step's predicted clean image instead (Imagen; "
                       "diffusers' thresholding)")
    p.add_argument("--clip-sample-range", type=float, default=1.0, metavar="R",
                   help="the clamp's bound R of --clip-sample (default %(default)g)")
    p.add_argument("--dynamic-thresholding-ratio", type=float, default=0.995, metavar="P",
                   help="the quantile of |x0| that --thresholding scales by, in (0, 1] (default %(default)g)")
    p.add_argument("--sample-max-value", type=float, default=1.0, metavar="S",
                   help="the largest scale of --thresholding (default %(default)g)")
    p.add_argument("--use-clipped-model-output", action="store_true",
                   help="DDIM: re-derive the noise from the clipped clean image (lucidrains' ddim_sample)")


def _load_model(args):
    """(model, diffusion, image_size, checkpoint dict) of --checkpoint, the model accelerated
    unless --no-accelerate."""
    device = pick_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint, device)
    model, diffusion, image_size = model_from_checkpoint(checkpoint, device, use_ema=not args.no_ema)
    if not args.no_accelerate:
        from .model import accelerate

        accelerate(model)
    return model, diffusion, image_size, checkpoint


def _sampler(args):
    """The sampler object the sampling flags describe."""
    options = dict(clip_sample=args.clip_sample, clip_sample_range=args.clip_sample_range,
                   thresholding=args.thresholding, dynamic_thresholding_ratio=args.dynamic_thresholding_ratio,
                   sample_max_value=args.sample_max_value)
    if args.use_clipped_model_output:  # DDIM's alone: make_sampler names the mistake for the others
        options["use_clipped_model_output"] = True
    return make_sampler(args.sampler, steps=args.steps, eta=args.eta, timestep_spacing=args.timestep_spacing,
                        **options)


def _sample(args):
    model, diffusion, image_size, _ = _load_model(args)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    return diffusion.sample(model, image_size, batch_size=args.num, channels=model.channels,
                            generator=generator, sampler=_sampler(args))


def _gif_stride(steps):
    # About 100 frames at most: every step of a few-step sampler, every other one of DDPM's 200.
    return max(1, steps.shape[0] // 100)


def _add_sample(sub):
    p = sub.add_parser("sample", help="sample images from a checkpoint into a PNG grid",
                       description="Run the 200-step reverse process and save the final images "
                       "as a grid (and optionally the GIF of one being denoised).")
    _add_sampling_args(p)
    p.add_argument("--out", default="samples.png", help="grid PNG path (default: samples.png)")
    p.add_argument("--gif", help="also write the denoising GIF of sample --index here")
    p.add_argument("--index", type=int, default=0, help="which sample the GIF shows")
    p.set_defaults(run=_run_sample)


def _run_sample(args):
    steps = _sample(args)
    print(f"wrote {save_grid(steps[-1], args.out)}")
    if args.gif:
        print(f"wrote {save_denoising_gif(steps, args.gif, index=args.index, every=_gif_stride(steps))}")


def _add_animate(sub):
    p = sub.add_parser("animate", help="GIF of one sample being denoised",
                       description="Sample from a checkpoint and animate the reverse process of "
                       "one image (or, with --grid, of all of them).")
    _add_sampling_args(p)
    p.set_defaults(num=16)
    p.add_argument("--out", default="denoising.gif")
    p.add_argument("--index", type=int, default=0, help="which sample to animate")
    p.add_argument("--grid", action="store_true", help="animate the grid of all samples")
    p.set_defaults(run=_run_animate)


def _run_animate(args):
    steps = _sample(args)
    index = "grid" if args.grid else args.index
    print(f"wrote {save_denoising_gif(steps, args.out, index=index, every=_gif_stride(steps))}")


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="score a checkpoint's samples: Fréchet distance to the real data",
                       description="Sample --num images per seed and print their Fréchet distance to the "
                       "real data in the features of a small classifier trained on the same data set "
                       "(trained on first use and cached), with the classifier's held-out accuracy and "
                       "the noise floor (the distance between two halves of the real data). Writes JSON.")
    _add_sampling_args(p)
    p.set_defaults(num=None)
    p.add_argument("--repeats", type=int, default=1,
                   help="score with seeds --seed, --seed + 1, ...: the mean and spread over them")
    p.add_argument("--batch-size", type=int, default=64, help="images per sampling call (default 64)")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files (images and labels)")
    p.add_argument("--out", default="evaluation.json", help="JSON path (default: evaluation.json)")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args):
    from .evaluate import QualityMeasure, evaluate

    if args.num is not None and args.num < 2:
        raise ValueError(f"--num must be at least 2 to fit a covariance, got {args.num}")
    if args.repeats < 1 or args.batch_size < 1:
        raise ValueError(f"--repeats and --batch-size must be positive, got {args.repeats} and {args.batch_size}")
    model, diffusion, image_size, checkpoint = _load_model(args)
    measure = QualityMeasure(checkpoint["config"]["dataset"], image_size, args.data_dir)
    result, _ = evaluate(model, diffusion, measure, _sampler(args), num=args.num, batch_size=args.batch_size,
                         seeds=range(args.seed, args.seed + args.repeats))
    result["checkpoint"] = str(args.checkpoint)
    spread = f" ± {result['fd_std']:.3f} over {args.repeats} seeds" if args.repeats > 1 else ""
    print(f"FD {result['fd_mean']:.3f}{spread} ({result['sampler']}, {result['steps']} steps, "
          f"{result['timestep_spacing']} spacing, {result['num']} images); noise floor "
          f"{result['noise_floor']:.3f}; classifier held-out accuracy {100 * result['classifier_accuracy']:.1f}% "
          f"({result['dataset']} {image_size}x{image_size}); {result['seconds_per_batch'] or float('nan'):.3f} s "
          f"per batch of {args.batch_size}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def _add_noise(sub):
    p = sub.add_parser("noise", help="the seed's figure: one image noised at several timesteps",
                       description="Plot q_sample of one training image at t = 0, 50, 100, 150, 199.")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--index", type=int, default=0, help="which image of the data set")
    p.add_argument("--image-size", type=int)
    p.add_argument("--schedule", choices=sorted(BETA_SCHEDULES), default="linear")
    p.add_argument("--timesteps", type=int, default=200, help="T of the schedule")
    p.add_argument("--at", type=int, nargs="+", default=[0, 50, 100, 150, 199],
                   help="the timesteps to show")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="noising.png")
    p.set_defaults(run=_run_noise)


def _run_noise(args):
    data = load_dataset(args.dataset, args.image_size, args.data_dir, hflip=False)
    if not 0 <= args.index < len(data):
        raise ValueError(f"--index must lie in [0, {len(data)}), got {args.index}")
    diffusion = GaussianDiffusion(args.timesteps, args.schedule)
    path = plot_noising(diffusion, data.images[args.index], args.out, args.at, args.seed)
    print(f"wrote {path}")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="ddpm-fast", description="Train and sample a DDPM (The Annotated Diffusion Model), fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    _add_noise(sub)
    _add_animate(sub)
    _add_evaluate(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, DataError, FileNotFoundError) as error:
        print(f"ddpm-fast {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
