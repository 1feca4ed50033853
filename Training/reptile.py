"""The update of one training episode: a Reptile meta-step, or the conventional (non-meta) baseline's step.

``meta``: Reptile (Nichol et al. 2018) as in the interactive meta-registration paper: from the current
initialisation, ``inner_steps`` Adam steps on the episode's loss (the case's full labels), then the initialisation
moves towards the adapted weights by ``beta_meta``, decaying linearly from ``beta_meta_start`` to ``beta_meta_end``.

``conventional``: one Adam step per episode on a persistent optimiser: an ordinary network trained on the same
episodes and loss.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from MetaRegistrationLib.adaptation import RegistrationProblem, adaptation_step
from MetaRegistrationLib.network import RegistrationNet

from .config import TrainConfig


def beta_meta(config: TrainConfig, episode: int) -> float:
    """The meta step size at an episode: linear from ``beta_meta_start`` (episode 0) to ``beta_meta_end``
    (the last episode)."""
    fraction = episode / max(config.episodes - 1, 1)
    return config.beta_meta_start + fraction * (config.beta_meta_end - config.beta_meta_start)


def reptile_episode(model: RegistrationNet, problem: RegistrationProblem, config: TrainConfig, beta: float,
                    step_seconds: list[float] | None = None) -> float:
    """Adapt a copy of ``model`` for ``inner_steps`` and move ``model`` towards it by ``beta``; returns the
    mean inner loss. ``step_seconds``, if given, receives the wall time of each inner step (for the benchmark)."""
    learner = copy.deepcopy(model)
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.inner_learning_rate)
    losses = []
    for _ in range(config.inner_steps):
        start = time.perf_counter()
        losses.append(adaptation_step(learner, optimizer, problem, config.adaptation))
        if step_seconds is not None:
            step_seconds.append(time.perf_counter() - start)
    with torch.no_grad():
        for initial, adapted in zip(model.parameters(), learner.parameters()):
            initial.add_(beta * (adapted - initial))
    return float(np.mean(losses))


def conventional_optimizer(model: RegistrationNet, config: TrainConfig) -> torch.optim.Adam | None:
    """The persistent Adam optimiser of a conventional run; ``None`` in meta mode (each episode has its own)."""
    if config.mode != "conventional":
        return None
    return torch.optim.Adam(model.parameters(), lr=config.inner_learning_rate)


def train_episode(model: RegistrationNet, problem: RegistrationProblem, config: TrainConfig, episode: int,
                  optimizer: torch.optim.Optimizer | None) -> tuple[float, float]:
    """Update ``model`` on one episode's problem, in place.

    Args:
        optimizer: the conventional run's persistent optimiser (:func:`conventional_optimizer`); ``None`` for a
            Reptile episode.

    Returns:
        ``(loss, beta)``: the episode's (mean) loss and its meta step size (NaN in conventional mode).
    """
    if optimizer is None:
        beta = beta_meta(config, episode)
        return reptile_episode(model, problem, config, beta), beta
    return adaptation_step(model, optimizer, problem, config.adaptation), float("nan")
