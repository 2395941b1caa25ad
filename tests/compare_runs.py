"""How the tests tell that two training runs did the same work on the same numbers, when float
rounding differs between them (another batch split, another thread count)."""

import torch

from ddpm_fast.train import TrainConfig, train


def initial_weights(out_dir, **config):
    """The weights a run of ``config`` starts from: those of a run of 0 steps."""
    model, _, _ = train(TrainConfig(**config, steps=0, out_dir=str(out_dir)), progress=False)
    return model.state_dict()


def assert_trained_alike(weights, reference, initial, rtol=1e-3):
    """The two state_dicts differ by less than ``rtol`` of the distance ``reference`` moved
    from ``initial``, over all parameters together.

    Not element by element: Adam scales each update by the gradient's running RMS, so an
    element whose gradient is near zero can move by up to lr either way on a rounding
    difference, while the rest agree to 1e-7. A run that trained on other images, other noise
    or other gradients differs by a large fraction of the distance.
    """
    def flat(state):
        return torch.cat([state[name].double().flatten() for name in initial])

    moved = (flat(reference) - flat(initial)).norm()
    difference = (flat(weights) - flat(reference)).norm()
    assert difference <= rtol * moved, f"differ by {difference / moved:.2e} of the distance trained"
