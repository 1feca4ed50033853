"""The update of one training step: a (batched) Reptile meta-step, or the conventional (non-meta) baseline's step.

``meta``: Reptile (Nichol et al. 2018) as in the interactive meta-registration paper: from the current
initialisation ``theta``, ``inner_steps`` Adam steps on each episode's loss (the case's full labels) give adapted
weights ``theta_b``; the initialisation then moves towards their mean, ``theta += beta * mean_b(theta_b - theta)``,
with ``beta`` decaying linearly from ``beta_meta_start`` to ``beta_meta_end``. A step holds ``meta_batch``
episodes (batched Reptile; 1 is the paper's serial Reptile):

- in one process, on a GPU, a batch of several episodes is adapted in parallel: :func:`torch.func.vmap` runs the
  network once over the stacked weights of all the episodes (one grouped convolution per layer, which fills the
  GPU better than one small episode), and one Adam over the stacked weights is, element by element, each
  episode's own Adam; on the CPU the episodes run one after the other;
- under ``torchrun`` (:mod:`.distributed`) each rank adapts its share of the batch and the ranks sum their
  ``theta_b - theta`` with an all-reduce: the same step as one process running the whole batch.

``conventional``: one Adam step per episode on a persistent optimiser: an ordinary network trained on the same
episodes and loss.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from MetaRegistrationLib.adaptation import RegistrationProblem, adaptation_step, displacement_loss
from MetaRegistrationLib.network import RegistrationNet

from .config import TrainConfig

WeightSum = dict[str, torch.Tensor]
"""Per parameter name, the sum over a batch's episodes of ``theta_b - theta`` (the parameter's shape)."""


def beta_meta(config: TrainConfig, episode: int) -> float:
    """The meta step size at an episode: linear from ``beta_meta_start`` (episode 0) to ``beta_meta_end``
    (the last episode). A batch takes the step size of its first episode."""
    fraction = episode / max(config.episodes - 1, 1)
    return config.beta_meta_start + fraction * (config.beta_meta_end - config.beta_meta_start)


def adapted_weight_sum(model: RegistrationNet, problems: Sequence[RegistrationProblem], config: TrainConfig,
                       step_seconds: list[float] | None = None, vectorised: bool | None = None
                       ) -> tuple[WeightSum, list[float]]:
    """Adapt ``model``'s weights to each problem (``inner_steps`` Adam steps each; ``model`` is unchanged).

    Args:
        step_seconds: if given, receives the wall time of each inner step, for the benchmark.
        vectorised: run the problems' inner loops together through ``vmap`` (one network call over stacked
            weights per step), or one after the other on a plain copy of the network. By default vectorised on a
            GPU, which one episode leaves mostly idle; one after the other on the CPU, where ``vmap``'s grouped
            convolutions are slower than the plain ones (docs/RESULTS.md, "Training at scale").

    Returns:
        ``(sum of theta_b - theta by parameter name, each episode's mean inner loss)``.
    """
    device = next(model.parameters()).device
    if vectorised is None:
        vectorised = len(problems) > 1 and device.type == "cuda"
    if vectorised:
        adapted, losses = _adapt_vectorised(model, problems, config, step_seconds)
        with torch.no_grad():
            return {name: (adapted[name] - initial).sum(0) for name, initial in model.named_parameters()}, losses
    weight_sum: WeightSum = {}
    losses = []
    for problem in problems:
        adapted, loss = _adapt_one(model, problem, config, step_seconds)
        with torch.no_grad():
            for name, initial in model.named_parameters():
                delta = adapted[name] - initial
                weight_sum[name] = delta if name not in weight_sum else weight_sum[name] + delta
        losses.append(loss)
    return weight_sum, losses


def apply_reptile_step(model: RegistrationNet, weight_sum: WeightSum, episodes: int, beta: float) -> None:
    """``theta += beta * weight_sum / episodes``: move ``model`` towards the batch's mean adapted weights."""
    with torch.no_grad():
        for name, initial in model.named_parameters():
            initial.add_(beta * (weight_sum[name] / episodes))


def reptile_step(model: RegistrationNet, problems: Sequence[RegistrationProblem], config: TrainConfig, beta: float,
                 step_seconds: list[float] | None = None, vectorised: bool | None = None) -> list[float]:
    """One Reptile step of ``model`` (in place) on a batch of episodes' problems (see :func:`adapted_weight_sum`);
    returns each episode's mean inner loss."""
    weight_sum, losses = adapted_weight_sum(model, problems, config, step_seconds, vectorised)
    apply_reptile_step(model, weight_sum, len(problems), beta)
    return losses


def _timed(step: Callable[[], object], step_seconds: list[float] | None, device: torch.device):
    start = time.perf_counter()
    value = step()
    if step_seconds is not None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_seconds.append(time.perf_counter() - start)
    return value


def _adapt_one(model: RegistrationNet, problem: RegistrationProblem, config: TrainConfig,
               step_seconds: list[float] | None) -> tuple[dict[str, torch.Tensor], float]:
    """The serial inner loop on a deep copy: its adapted weights by name and its mean loss."""
    learner = copy.deepcopy(model)
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.inner_learning_rate)
    device = next(model.parameters()).device
    losses = [_timed(lambda: adaptation_step(learner, optimizer, problem, config.adaptation), step_seconds, device)
              for _ in range(config.inner_steps)]
    return {name: weight.detach() for name, weight in learner.named_parameters()}, float(np.mean(losses))


def _adapt_vectorised(model: RegistrationNet, problems: Sequence[RegistrationProblem], config: TrainConfig,
                      step_seconds: list[float] | None) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The inner loops of B episodes at once. The network runs under ``vmap`` over weights stacked to (B, ...) and
    the episodes' inputs, which must share one fixed grid shape; each episode's loss (warp, Dice, bending: its own
    number of label channels) is computed on its slice, and their sum is differentiated, which gives each stacked
    slice its own episode's gradient."""
    shapes = {tuple(problem.inputs.shape) for problem in problems}
    if len(shapes) > 1:
        raise ValueError(f"a batch of episodes needs one network input shape, got {sorted(shapes)}")
    params, buffers = stack_module_state([model] * len(problems))
    params = {name: weight.detach().clone().requires_grad_() for name, weight in params.items()}
    template = copy.deepcopy(model).to("meta")
    optimizer = torch.optim.Adam(params.values(), lr=config.inner_learning_rate)
    inputs = torch.stack([problem.inputs for problem in problems])  # (B, 1, C, k, j, i)
    batched = vmap(lambda p, b, x: functional_call(template, (p, b), (x,)))
    device = inputs.device
    losses = np.zeros((config.inner_steps, len(problems)))

    def step(index: int) -> None:
        displacements = batched(params, buffers, inputs)  # (B, 1, 3, k, j, i)
        totals = [displacement_loss(displacement, problem, config.adaptation)[0]
                  for displacement, problem in zip(displacements, problems)]
        optimizer.zero_grad(set_to_none=True)
        torch.stack(totals).sum().backward()
        optimizer.step()
        losses[index] = [float(total.detach()) for total in totals]

    for index in range(config.inner_steps):
        _timed(lambda: step(index), step_seconds, device)
    return {name: weight.detach() for name, weight in params.items()}, losses.mean(0).tolist()


def conventional_optimizer(model: RegistrationNet, config: TrainConfig) -> torch.optim.Adam | None:
    """The persistent Adam optimiser of a conventional run; ``None`` in meta mode (each episode has its own)."""
    if config.mode != "conventional":
        return None
    return torch.optim.Adam(model.parameters(), lr=config.inner_learning_rate)
