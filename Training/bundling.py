"""``metareg-train bundle``: a run's checkpoint, evaluated on the val split, written as a model with its card.

The card (``<stem>.json``, :mod:`MetaRegistrationLib.checkpoint`) describes the model in the manner of a MONAI
bundle's ``metadata.json``: ``name``, ``version``, ``license``, ``intended_use``, ``data_source``, ``data_terms``,
``inputs`` (with the ``training_domain``: the voxel spacing and field of view of the training images),
``outputs`` and ``references``, beside the format's own ``weights``, ``config`` and ``provenance`` (now with
``val_metrics``). Provenance is portable: the data set by name, paths relative to the project, and the commit
without ``-dirty`` (``git_uncommitted_changes`` says whether the tree had changes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MetaRegistrationLib.checkpoint import save_checkpoint
from MetaRegistrationLib.data import Dataset, default_data_dir, find_image
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.evaluation import evaluate_cases, summarise
from MetaRegistrationLib.models import load_model, model_config
from MetaRegistrationLib.network import INPUT_CHANNELS, NetworkConfig

from .config import load_config
from .run_folder import CONFIG_FILE

PROJECT_ROOT = Path(__file__).resolve().parents[1]

LICENSE = "Apache-2.0"
"""The weights' license: the project's own (``LICENSE.txt``)."""

INTENDED_USE = (
    "Research on interactive MR-to-TRUS prostate registration: the network initialisation that the 'meta' method "
    "adapts, a few gradient steps per interaction, as tracked 2D TRUS frames are acquired. Not a medical device; "
    "not for clinical decisions (diagnosis, biopsy or treatment planning or guidance).")

DATA_SOURCE = {
    "name": "mrus-prostate",
    "description": "paired pre-operative T2-weighted MR (moving) and intra-operative 3D transrectal ultrasound "
                   "(TRUS, fixed) of prostate cancer patients from the SmartTarget trials, with gland and "
                   "corresponding landmark labels",
    "origin": "the public paired MR-US prostate demo data of the DeepReg toolkit, as published by its authors",
    "url": "https://github.com/DeepRegNet/DeepReg",
    "location": "../shared/data/mrus-prostate, relative to the project root (not part of the repository)",
}

DATA_TERMS = ("Public demo data of the DeepReg toolkit, used for research and testing only; it is not "
              "redistributed with the project or the model.")
"""The terms of :data:`DATA_SOURCE`; a model trained on another data set has its name only, and no terms."""

REFERENCES = [
    {"title": "Meta-Learning Initializations for Interactive Medical Image Registration",
     "authors": "Z. M. C. Baum, Y. Hu, D. C. Barratt", "year": 2022,
     "venue": "IEEE Transactions on Medical Imaging", "doi": "10.1109/TMI.2022.3218147",
     "role": "the method: Reptile-meta-learned initialisation adapted to sparse, interactively acquired TRUS"},
    {"title": "Meta-Registration: Learning Test-Time Optimization for Single-Pair Image Registration",
     "authors": "Z. M. C. Baum, Y. Hu, D. C. Barratt", "year": 2022,
     "role": "meta-learning for test-time optimisation on one image pair (TRUS of 108 prostate cancer patients)"},
    {"title": "A Meta-Learning Approach for Medical Image Registration",
     "authors": "H. Park, G. M. Lee, S. Kim, G. H. Ryu, A. Jeong, S. H. Park, M. Sagong", "year": 2021,
     "arxiv": "2104.10447", "role": "Reptile meta-learning across registration data sets"},
    {"title": "Learning-based Image Registration with Meta-Regularization", "authors": "E. Al Safadi, X. Song",
     "year": 2021, "venue": "CVPR", "role": "learned regularisation of the displacement output"},
    {"title": "Weakly-supervised learning of multi-modal features for regularised iterative descent in 3D image "
              "registration", "authors": "M. Blendowski, L. Hansen, M. P. Heinrich", "year": 2021,
     "venue": "Medical Image Analysis", "role": "weakly supervised multimodal features in iterative registration"},
    {"title": "On First-Order Meta-Learning Algorithms", "authors": "A. Nichol, J. Achiam, J. Schulman",
     "year": 2018, "arxiv": "1803.02999", "role": "Reptile, the meta-training algorithm"},
    {"title": "Weakly-supervised convolutional neural networks for multimodal image registration",
     "authors": "Y. Hu, M. Modat, E. Gibson, W. Li, N. Ghavami, E. Bonmati, G. Wang, S. Bandula, C. M. Moore, "
                "M. Emberton, et al.", "year": 2018, "venue": "Medical Image Analysis 49, 1-13",
     "role": "the LocalNet architecture and label-driven training"},
]


def _range(values: Sequence[np.ndarray]) -> dict:
    """Per-axis min and max of (3,) vectors, rounded to 0.1 um."""
    stacked = np.stack(values)
    return {"min": np.round(stacked.min(0), 4).tolist(), "max": np.round(stacked.max(0), 4).tolist()}


def training_domain(dataset: Dataset, split: str) -> dict:
    """Facts about the training images that a data check can compare new images with (headers only).

    Returns:
        ``split``, ``cases``, and for the TRUS (``fixed``) and the MR (``moving``) images the voxel spacing and
        the field of view (size x spacing), in mm per ITK voxel axis (i, j, k), each as ``{"min", "max"}`` over
        the cases.
    """
    case_ids = dataset.select(split=split)
    domain: dict = {"split": split, "cases": len(case_ids), "axes": "ITK voxel axes (i, j, k)"}
    for side in ("fixed", "moving"):
        spacings, fields = [], []
        for case_id in case_ids:
            path = find_image(dataset.root / f"{side}_images", case_id)
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            try:
                reader.ReadImageInformation()
            except RuntimeError:
                raise InputError(f"{path}: its header cannot be read as an image") from None
            spacing = np.asarray(reader.GetSpacing()[:3], dtype=float)
            spacings.append(spacing)
            fields.append(spacing * np.asarray(reader.GetSize()[:3]))
        domain[f"{side}_voxel_spacing_mm"] = _range(spacings)
        domain[f"{side}_field_of_view_mm"] = _range(fields)
    return domain


def model_description(name: str, version: str, network: NetworkConfig, data_set: str, domain: dict) -> dict:
    """The descriptive fields of the card of a model trained on the data set named ``data_set`` (see the module
    docstring); ``domain`` is its :func:`training_domain`."""
    known = data_set == DATA_SOURCE["name"]
    spacing = domain["fixed_voxel_spacing_mm"]
    return {
        "name": name,
        "version": version,
        "license": LICENSE,
        "intended_use": INTENDED_USE,
        "data_source": DATA_SOURCE if known else {"name": data_set},
        "data_terms": DATA_TERMS if known else "not recorded",
        "inputs": {
            "network_input": {
                "built_by": "MetaRegistrationLib.network.make_inputs",
                "shape": f"(B, {network.in_channels}, k, j, i) on the TRUS (fixed) voxel grid",
                "channels": list(INPUT_CHANNELS),
                "values": "images divided by 255 (intensities 0..255); labels 0/1; the TRUS image and gland only "
                          "where acquired_mask is 1 (the frames acquired so far), 0 elsewhere",
                "moving": "the MR image and gland label resampled onto the TRUS grid through the initial "
                          "alignment A",
                "network_voxel_spacing_mm": {bound: [value * network.input_downsample for value in values]
                                             for bound, values in spacing.items()},
                "pooling": f"the network average-pools its input by input_downsample ({network.input_downsample}) "
                           f"and upsamples the displacement back to the TRUS grid",
            },
            "frame": {
                "class": "MetaRegistrationLib.sweep.Frame",
                "description": "one tracked 2D sagittal TRUS image (V, U), its gland label (V, U) and its 4x4 "
                               "pose from pixel index (u, v, w, 1) to TRUS world (x, y, z, 1) in LPS mm",
            },
            "coordinates": "world coordinates in LPS millimetres (ITK, DICOM)",
            "training_domain": domain,
        },
        "outputs": {
            "displacement": {
                "shape": "(B, 3, k, j, i) on the TRUS (fixed) voxel grid",
                "units": "mm",
                "channels": ["x", "y", "z"],
                "axes": "LPS world axes (not voxel axes)",
                "transform": "phi(x) = A (x + u(x)) maps a TRUS (fixed) world point x to the MR (moving) world "
                             "point showing the same tissue: the resampling direction (the registered MR is "
                             "MR(phi(x))), ITK's transform direction; A is the 4x4 initial alignment",
            },
        },
        "references": REFERENCES,
    }


def project_relative(path: Path) -> str:
    """``path`` relative to the project root if it lies inside it, else its last two parts."""
    path = Path(os.path.abspath(path))
    if path.is_relative_to(PROJECT_ROOT):
        return path.relative_to(PROJECT_ROOT).as_posix()
    return Path(path.parent.name, path.name).as_posix()


def portable_provenance(provenance: dict, source: Path, data_set: str, val_metrics: dict) -> dict:
    """A checkpoint's provenance made portable for a model card: the data set by name, the source checkpoint
    relative to the project, the commit without ``-dirty``; with the ``val_metrics``."""
    commit = str(provenance.get("git_commit", "unknown"))
    training_config = dict(provenance.get("training_config", {}))
    if Path(str(training_config.get("data", ""))).is_absolute():
        training_config["data"] = data_set
    return {**provenance, "data": data_set, "git_commit": commit.removesuffix("-dirty"),
            "git_uncommitted_changes": commit.endswith("-dirty"), "training_config": training_config,
            "source_checkpoint": project_relative(source), "val_metrics": val_metrics}


def bundle(run_dir: Path, checkpoint: str, out: Path, version: str, frames: int = 10) -> dict:
    """Evaluate a run's checkpoint on its val split and write it as a model with its card at stem ``out``.

    Args:
        run_dir: the run folder; checkpoint: a checkpoint stem in it (``latest``, ``final``...).
        out: the model's stem (its ``name`` on the card is the stem's name); version: the model's version.
        frames: the number of sweep frames the val metrics are measured at.

    Returns:
        The val metrics written in the card's ``provenance.val_metrics``.
    """
    config = load_config(run_dir / CONFIG_FILE)
    source = run_dir / checkpoint
    model = load_model(source)
    network, settings, card = model
    dataset = Dataset(config.data or default_data_dir())
    domain = training_domain(dataset, config.train_split)
    val_ids = dataset.select(split=config.val_split)
    # Measured in the precision the run trained in, as its validations were.
    rows = evaluate_cases(dataset, val_ids, "meta", [frames], model=model, precision=config.precision)
    (summary,) = summarise(rows)
    metrics = {"split": config.val_split, "cases": len(val_ids), "frames": frames,
               "median_tre_mm": round(summary.median_tre_mm, 3), "mean_tre_mm": round(summary.mean_tre_mm, 3),
               "mean_dsc": round(summary.mean_dsc, 4),
               "median_interaction_s": round(float(np.median([r.seconds for r in rows])), 3)}
    data_set = dataset.root.resolve().name
    save_checkpoint(out, network, model_config(network.config, settings),
                    portable_provenance(card["provenance"], source, data_set, metrics),
                    model_description(Path(out).name, version, network.config, data_set, domain))
    return metrics
