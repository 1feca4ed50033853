"""``metareg-train``: meta-train the registration initialisation with Reptile (and train baselines).

Config-first: a YAML file (``Training/configs/*.yaml``) validated into
:class:`TrainConfig`, copied (fully resolved) into the run folder with the git
commit beside it (``git_commit.txt``). The run
folder holds ``config.yaml``, ``log.csv`` (one row per episode),
``val.csv`` (periodic sweep validation) and the checkpoints ``latest`` (every
``checkpoint_every`` episodes, atomically) and ``final``. ``--resume RUN`` continues a
killed run from ``latest``; episodes are seeded from (seed, episode), so a resumed
run draws the same episodes as an uninterrupted one.

Modes:
    ``meta``: Reptile (Nichol et al. 2018) as in the interactive meta-registration
        paper: each episode samples a training case and a random clinically
        plausible frame set, runs ``inner_steps`` Adam steps from the current
        initialisation on the loss with the case's full labels, then moves the
        initialisation towards the adapted weights by ``beta_meta``, decaying
        linearly from ``beta_meta_start`` to ``beta_meta_end``.
    ``conventional``: the same episodes, one Adam step each on a persistent
        optimiser: an ordinary (non-meta) network on the same input.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import io
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from MetaRegistrationLib.adaptation import adaptation_step, build_problem
from MetaRegistrationLib.settings import AdaptationSettings
from MetaRegistrationLib.alignment import frames_gland_alignment
from MetaRegistrationLib.checkpoint import checkpoint_files, read_card
from MetaRegistrationLib.data import Case, Dataset, default_data_dir
from MetaRegistrationLib.errors import InputError, MetaRegistrationError
from MetaRegistrationLib.evaluation import evaluate_cases, summarise
from MetaRegistrationLib.files import atomic_path, write_text_atomic
from MetaRegistrationLib.geometry import Grid, weighted_centroid
from MetaRegistrationLib.models import load_model, save_model
from MetaRegistrationLib.network import NetworkConfig, RegistrationNet
from MetaRegistrationLib.sweep import rasterise_positions, random_frame_positions

MODES = ("meta", "conventional")


@dataclass(frozen=True)
class AugmentationConfig:
    """Random affine of the MR's pose (no flips), about its gland centroid."""

    rotation_deg: float = 5.0
    scale: float = 0.05
    translation_mm: float = 5.0


@dataclass(frozen=True)
class TrainConfig:
    """A training run; every field may be set in the YAML file."""

    mode: str = "meta"
    data: str = ""
    train_split: str = "train"
    val_split: str = "val"
    seed: int = 0
    episodes: int = 2000
    inner_steps: int = 10
    inner_learning_rate: float = 1e-3
    beta_meta_start: float = 0.5
    beta_meta_end: float = 0.0
    f_min: int = 2
    f_max: int = 10
    full_volume_input: bool = False
    checkpoint_every: int = 25
    validate_every: int = 250
    validate_cases: int = 12
    threads: int = 0
    network: NetworkConfig = field(default_factory=NetworkConfig)
    adaptation: AdaptationSettings = field(default_factory=AdaptationSettings)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)

    @classmethod
    def from_dict(cls, values: dict, source: str) -> TrainConfig:
        """Validate a parsed YAML mapping; one-line ``InputError`` naming ``source`` on any problem."""
        nested = {"network": NetworkConfig, "adaptation": AdaptationSettings, "augmentation": AugmentationConfig}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        values = dict(values)
        try:
            for name, kind in nested.items():
                if name in values:
                    values[name] = (NetworkConfig.from_dict(values[name]) if kind is NetworkConfig
                                    else kind(**values[name]))
            config = cls(**values)
        except (TypeError, ValueError) as error:
            raise InputError(f"{source}: {error}") from None
        if config.mode not in MODES:
            raise InputError(f"{source}: mode must be one of {', '.join(MODES)}, got {config.mode!r}")
        if not 1 <= config.f_min <= config.f_max:
            raise InputError(f"{source}: need 1 <= f_min <= f_max, got {config.f_min} and {config.f_max}")
        if config.episodes < 1 or config.inner_steps < 1 or config.checkpoint_every < 1:
            raise InputError(f"{source}: episodes, inner_steps and checkpoint_every must be >= 1")
        return config

    def to_dict(self) -> dict:
        """Plain lists and dicts (JSON and YAML safe)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def load_config(path: Path) -> TrainConfig:
    """Read and validate a YAML config file."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        raise InputError(f"{path}: is not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise InputError(f"{path}: must be a mapping of settings")
    return TrainConfig.from_dict(values, str(path))


def git_commit() -> str:
    """The checkout's commit (with ``-dirty`` for uncommitted changes), or ``unknown``."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(array)[None], dtype=torch.float32)


def augmented_grid(grid: Grid, centre: np.ndarray, rng: np.random.Generator, config: AugmentationConfig) -> Grid:
    """``grid`` moved by a random affine (rotation, scale, translation; no flip) about ``centre``."""
    angles = np.deg2rad(rng.uniform(-config.rotation_deg, config.rotation_deg, 3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        plane = [a for a in range(3) if a != axis]
        step = np.eye(3)
        step[np.ix_(plane, plane)] = [[c, -s], [s, c]]
        rotation = step @ rotation
    linear = rotation @ np.diag(rng.uniform(1 - config.scale, 1 + config.scale, 3))
    offset = rng.uniform(-config.translation_mm, config.translation_mm, 3)
    index_to_world = grid.index_to_world
    matrix = linear @ index_to_world[:3, :3]
    origin = linear @ (index_to_world[:3, 3] - centre) + centre + offset
    # A Grid's direction may hold the scale: only index_to_world matters downstream.
    return Grid.from_arrays(grid.size, (1.0, 1.0, 1.0), origin, matrix)


class EpisodeSampler:
    """Draws training episodes: a case, an augmented MR pose and a random frame set."""

    def __init__(self, cases: list[Case], config: TrainConfig):
        self.cases = cases
        self.config = config
        self._tensors = [(_tensor(c.moving_image.array), _tensor(c.moving_labels.array), _tensor(c.fixed_image.array),
                          _tensor(c.fixed_labels.array)) for c in cases]

    def problem(self, episode: int):
        """The :class:`RegistrationProblem` of an episode, reproducible from (seed, episode)."""
        rng = np.random.default_rng([self.config.seed, episode])
        index = int(rng.integers(len(self.cases)))
        case = self.cases[index]
        moving_image, moving_labels, fixed_image, fixed_labels = self._tensors[index]
        fixed_gland = case.fixed_labels.array[0]
        moving_gland = case.moving_labels.array[0]
        moving_grid = augmented_grid(case.moving_image.grid, weighted_centroid(moving_gland, case.moving_image.grid),
                                     rng, self.config.augmentation)
        if self.config.full_volume_input:
            image, gland = case.fixed_image.array[0], fixed_gland
            mask = np.ones_like(gland)
        else:
            positions = random_frame_positions(fixed_gland, rng, self.config.f_min, self.config.f_max)
            image, gland, mask = rasterise_positions(case.fixed_image, fixed_gland, positions)
        initial = frames_gland_alignment(moving_gland, moving_grid, gland, mask, case.fixed_image.grid)
        as_input = lambda a: torch.as_tensor(a[None, None])  # noqa: E731
        # The loss sees the full labels (every channel, every voxel): the stronger
        # supervision meta-training can afford and test time cannot.
        return build_problem(moving_image, moving_labels, moving_grid, case.fixed_image.grid, initial,
                             as_input(image), as_input(gland), as_input(mask), fixed_labels, None), case.case_id


def reptile_episode(model: RegistrationNet, problem, config: TrainConfig, beta: float) -> float:
    """Adapt a copy of ``model`` for ``inner_steps`` and move ``model`` towards it by ``beta``; returns the
    mean inner loss."""
    learner = copy.deepcopy(model)
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.inner_learning_rate)
    losses = [adaptation_step(learner, optimizer, problem, config.adaptation) for _ in range(config.inner_steps)]
    with torch.no_grad():
        for initial, adapted in zip(model.parameters(), learner.parameters()):
            initial.add_(beta * (adapted - initial))
    return float(np.mean(losses))


def beta_meta(config: TrainConfig, episode: int) -> float:
    """The meta step size at an episode: linear from ``beta_meta_start`` to ``beta_meta_end``."""
    fraction = episode / max(config.episodes - 1, 1)
    return config.beta_meta_start + fraction * (config.beta_meta_end - config.beta_meta_start)


def validate(model: RegistrationNet, config: TrainConfig, dataset: Dataset, case_ids: list[str],
             checkpoint_stem: Path) -> dict:
    """Sweep validation of the latest checkpoint: TRE and DSC at 10 frames (``meta`` method)."""
    rows = evaluate_cases(dataset, case_ids, "meta", [config.f_max], model=checkpoint_stem)
    (summary,) = summarise(rows)
    return {"median_tre_mm": summary.median_tre_mm, "mean_dsc": summary.mean_dsc}


def _drop_rows_from(path: Path, column: str, first: int) -> None:
    """Remove the rows of a log whose ``column`` is >= ``first``: episodes a killed run did after its
    last checkpoint, which the resumed run does again."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [row for row in rows if int(row[column]) < first]
    if len(kept) == len(rows):
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    write_text_atomic(path, text.getvalue())


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def train(config: TrainConfig, run_dir: Path, resume: bool = False) -> Path:
    """Run (or resume) training; returns the stem of the final checkpoint."""
    if config.threads:
        torch.set_num_threads(config.threads)
    dataset = Dataset(config.data or default_data_dir())
    latest = run_dir / "latest"
    start_episode = 0
    if resume:
        if not checkpoint_files(latest)[1].exists():
            raise InputError(f"{run_dir}: nothing to resume (no latest.json)")
        model, _, card = load_model(latest)
        start_episode = int(card["provenance"]["episodes_done"])
    else:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise InputError(f"{run_dir}: already holds a run; use --resume to continue it or choose a new folder")
        torch.manual_seed(config.seed)
        model = RegistrationNet(config.network)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        write_text_atomic(run_dir / "git_commit.txt", git_commit() + "\n")
    train_ids = dataset.split(config.train_split)
    val_ids = dataset.split(config.val_split)[: config.validate_cases]
    cases = [dataset.load(c) for c in tqdm(train_ids, desc="loading training cases", file=sys.stderr)]
    sampler = EpisodeSampler(cases, config)
    model.train()
    conventional = torch.optim.Adam(model.parameters(), lr=config.inner_learning_rate) \
        if config.mode == "conventional" else None
    optimizer_state = run_dir / "latest-optimizer.pt"
    if conventional is not None and resume:
        # Plain tensors and numbers only: weights_only loading executes no code.
        conventional.load_state_dict(torch.load(optimizer_state, weights_only=True))
    provenance = {"data": str(dataset.root), "train_split": config.train_split, "train_cases": len(train_ids),
                  "mode": config.mode, "git_commit": git_commit(), "hardware": hardware(),
                  "training_config": config.to_dict()}
    elapsed = 0.0
    if resume:
        elapsed = float(read_card(latest)["provenance"].get("wall_seconds", 0.0))
        _drop_rows_from(run_dir / "log.csv", "episode", start_episode)
        _drop_rows_from(run_dir / "val.csv", "episodes_done", start_episode + 1)
    bar = tqdm(range(start_episode, config.episodes), initial=start_episode, total=config.episodes,
               desc=f"{config.mode} training", file=sys.stderr)
    for episode in bar:
        torch.manual_seed(config.seed * 1_000_003 + episode)
        tick = time.perf_counter()
        problem, case_id = sampler.problem(episode)
        if conventional is None:
            beta = beta_meta(config, episode)
            loss = reptile_episode(model, problem, config, beta)
        else:
            beta = float("nan")
            loss = adaptation_step(model, conventional, problem, config.adaptation)
        elapsed += time.perf_counter() - tick
        bar.set_postfix(loss=f"{loss:.4f}", case=case_id)
        _append_csv(run_dir / "log.csv", {"episode": episode, "case": case_id, "loss": f"{loss:.5f}",
                                          "beta_meta": f"{beta:.5f}", "wall_seconds": f"{elapsed:.1f}"})
        done = episode + 1
        if done % config.checkpoint_every == 0 or done == config.episodes:
            if conventional is not None:
                # Saved before the weights, so a checkpoint never lacks its optimiser state (a kill
                # between the two leaves the optimiser one interval ahead; the run still resumes).
                with atomic_path(optimizer_state) as temporary:
                    torch.save(conventional.state_dict(), temporary)
            save_model(latest, model, config.adaptation, {**provenance, "episodes_done": done,
                                                          "wall_seconds": round(elapsed, 1)})
        if config.validate_every and (done % config.validate_every == 0 or done == config.episodes):
            scores = validate(model, config, dataset, val_ids, latest)
            _append_csv(run_dir / "val.csv", {"episodes_done": done, **{k: f"{v:.4f}" for k, v in scores.items()}})
            bar.write(f"episode {done}: val median TRE {scores['median_tre_mm']:.2f} mm, "
                      f"mean DSC {scores['mean_dsc']:.3f}")
    final = run_dir / "final"
    save_model(final, model, config.adaptation, {**provenance, "episodes_done": config.episodes,
                                                 "wall_seconds": round(elapsed, 1)})
    return final


def hardware() -> str:
    """The device training ran on, in words."""
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, CPU"


def bundle(run_dir: Path, checkpoint: str, out: Path, frames: int = 10) -> dict:
    """Evaluate a run's checkpoint on its val split and write it as a self-describing model (with val metrics)."""
    config = load_config(run_dir / "config.yaml")
    source = run_dir / checkpoint
    network, settings, card = load_model(source)
    dataset = Dataset(config.data or default_data_dir())
    val_ids = dataset.split(config.val_split)
    rows = evaluate_cases(dataset, val_ids, "meta", [frames], model=source)
    (summary,) = summarise(rows)
    metrics = {"split": config.val_split, "cases": len(val_ids), "frames": frames,
               "median_tre_mm": round(summary.median_tre_mm, 3), "mean_tre_mm": round(summary.mean_tre_mm, 3),
               "mean_dsc": round(summary.mean_dsc, 4),
               "median_interaction_s": round(float(np.median([r.seconds for r in rows])), 3)}
    save_model(out, network, settings, {**card["provenance"], "source_checkpoint": str(source),
                                        "val_metrics": metrics})
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metareg-train", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mode in MODES:
        sub = commands.add_parser(mode, help=f"train in {mode} mode (the config's mode must match)")
        sub.add_argument("--config", type=Path, help="YAML config (not needed with --resume)")
        sub.add_argument("--run", type=Path, required=True, help="run folder")
        sub.add_argument("--resume", action="store_true", help="continue the run in --run from its latest checkpoint")
    sub = commands.add_parser("bundle", help="evaluate a run's checkpoint on val and write it as a model with its card")
    sub.add_argument("--run", type=Path, required=True, help="run folder")
    sub.add_argument("--checkpoint", default="latest", help="checkpoint name in the run folder (default: latest)")
    sub.add_argument("--out", type=Path, required=True, help="output model stem, e.g. MetaRegistrationLib/bundled_models/meta-init")
    args = parser.parse_args(argv)
    try:
        if args.command == "bundle":
            metrics = bundle(args.run, args.checkpoint, args.out)
            print(f"wrote {args.out}.safetensors and {args.out}.json; val: {json.dumps(metrics)}")
            return 0
        if args.config is not None:
            config = load_config(args.config)
        elif args.resume:
            config = load_config(args.run / "config.yaml")
        else:
            raise InputError("--config is needed to start a run")
        if config.mode != args.command:
            raise InputError(f"{args.config or args.run / 'config.yaml'}: mode is {config.mode!r}, "
                             f"not {args.command!r}")
        final = train(config, args.run, resume=args.resume)
    except MetaRegistrationError as error:
        print(f"metareg-train: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {final}.safetensors and {final}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
