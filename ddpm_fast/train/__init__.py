"""Training: the config, the loop (one process or torchrun), checkpoints, mixed precision and
the training record.

- :mod:`.config`: ``TrainConfig`` and its checks;
- :mod:`.loop`: ``train()``;
- :mod:`.checkpoint`: atomic checkpoints and rebuilding a model from one;
- :mod:`.distributed`: the process group under torchrun;
- :mod:`.precision`: autocast and the GradScaler;
- :mod:`.record`: metrics.csv, the training record.
"""

from .checkpoint import CHECKPOINT_NAME, load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import TrainConfig, check_config, pick_device, unet_kwargs
from .loop import LOSS_CURVE_NAME, draw_step, step_seed, train, update_ema

__all__ = [
    "CHECKPOINT_NAME", "LOSS_CURVE_NAME", "TrainConfig", "check_config", "draw_step", "load_checkpoint",
    "model_from_checkpoint", "pick_device", "save_checkpoint", "step_seed", "train", "unet_kwargs",
    "update_ema",
]
