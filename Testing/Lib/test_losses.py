"""Tests of MetaRegistrationLib.losses on tiny synthetic tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from MetaRegistrationLib import losses
from MetaRegistrationLib.losses import bending_energy, multiscale_dice_loss, registration_loss_terms, soft_dice_loss

SHAPE = (20, 26, 23)  # (k, j, i)
ISOTROPIC = (1.5, 1.5, 1.5)


def ball(centre_kji, radius, shape=SHAPE) -> torch.Tensor:
    """A (1, 1, k, j, i) solid ball of ``radius`` voxels."""
    axes = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    squared = sum((a - c) ** 2 for a, c in zip(axes, centre_kji))
    return torch.as_tensor(squared <= radius**2, dtype=torch.float64)[None, None]


def direct_dice_loss(prediction: np.ndarray, target: np.ndarray, scale_mm: float, spacing_ijk) -> float:
    """``1 - soft Dice`` after a full-resolution Gaussian blur (zero outside): what the pyramid approximates."""
    if scale_mm > 0:
        sigmas = [scale_mm / h for h in spacing_ijk[::-1]]
        prediction = ndimage.gaussian_filter(prediction, sigmas, mode="constant", truncate=4.0)
        target = ndimage.gaussian_filter(target, sigmas, mode="constant", truncate=4.0)
    smooth = losses.DICE_SMOOTH
    return 1 - (2 * (prediction * target).sum() + smooth) / ((prediction**2).sum() + (target**2).sum() + smooth)


def test_soft_dice_of_identical_and_disjoint_labels():
    label = ball((10, 13, 11), 5)
    assert soft_dice_loss(label, label).item() == pytest.approx(0.0, abs=1e-6)
    far = ball((3, 3, 3), 2)
    assert soft_dice_loss(label, far).item() > 0.99


def test_multiscale_dice_of_identical_labels_is_zero_and_of_disjoint_ones_high():
    label = ball((10, 13, 11), 5)
    assert multiscale_dice_loss(label, label, ISOTROPIC).item() == pytest.approx(0.0, abs=1e-5)
    first, second = ball((5, 6, 6), 3), ball((15, 20, 17), 3)
    assert multiscale_dice_loss(first, second, ISOTROPIC, scales_mm=[0.0]).item() > 0.99
    # Blurring makes even disjoint labels overlap a little: that is the capture range.
    assert multiscale_dice_loss(first, second, ISOTROPIC).item() > 0.7


def test_multiscale_dice_decreases_as_labels_approach():
    target = ball((10, 13, 11), 5)
    values = [multiscale_dice_loss(ball((10, 13, 11 + shift), 5), target, ISOTROPIC).item() for shift in (8, 4, 1)]
    assert values[0] > values[1] > values[2]


@pytest.mark.parametrize("spacing", [ISOTROPIC, (1.0, 1.5, 2.0)])
@pytest.mark.parametrize("scale_mm", losses.DICE_SCALES_MM)
@pytest.mark.parametrize("radius", [6, 2])  # a gland, and a landmark blob of a few dozen voxels
def test_pyramid_agrees_with_a_direct_full_resolution_blur(spacing, scale_mm, radius):
    prediction = ball((10, 12, 10), radius)
    target = ball((12, 10, 13), radius)
    fast = multiscale_dice_loss(prediction, target, spacing, scales_mm=[scale_mm]).item()
    direct = direct_dice_loss(prediction[0, 0].numpy(), target[0, 0].numpy(), scale_mm, spacing)
    assert fast == pytest.approx(direct, abs=0.02)


def test_multiscale_dice_is_the_mean_over_scales():
    prediction, target = ball((10, 12, 10), 6), ball((11, 14, 13), 6)
    scales = (0.0, 2.0, 8.0)
    each = [multiscale_dice_loss(prediction, target, ISOTROPIC, scales_mm=[s]) for s in scales]
    torch.testing.assert_close(multiscale_dice_loss(prediction, target, ISOTROPIC, scales_mm=scales),
                               torch.stack(each).mean())


def test_mask_compares_only_the_masked_voxels():
    target = ball((10, 13, 11), 6)
    prediction = target.clone()
    prediction[:, :, :, :8] = 1 - prediction[:, :, :, :8]  # wrong, but only where j < 8
    mask = torch.zeros(1, 1, *SHAPE, dtype=torch.float64)
    mask[:, :, :, 10:] = 1
    assert multiscale_dice_loss(prediction, target, ISOTROPIC).item() > 0.3
    assert multiscale_dice_loss(prediction, target, ISOTROPIC, mask=mask).item() == pytest.approx(0.0, abs=1e-5)
    # Masking happens before the blur: the same as blurring the masked labels.
    torch.testing.assert_close(multiscale_dice_loss(prediction, target, ISOTROPIC, mask=1 - mask),
                               multiscale_dice_loss(prediction * (1 - mask), target * (1 - mask), ISOTROPIC))
    # The target's side computed once (as the inner steps of an episode reuse it) gives the same loss.
    cached = losses.target_scale_space(target, ISOTROPIC, mask)
    torch.testing.assert_close(multiscale_dice_loss(prediction, target, ISOTROPIC, mask=mask, target_blurred=cached),
                               multiscale_dice_loss(prediction, target, ISOTROPIC, mask=mask))
    other = losses.target_scale_space(1 - target, ISOTROPIC, mask)
    assert multiscale_dice_loss(prediction, target, ISOTROPIC, mask=mask, target_blurred=other).item() > 0.3


def test_dice_averages_over_batch_and_channels():
    good = ball((10, 13, 11), 5)
    bad = ball((4, 4, 4), 3)
    pair_loss = soft_dice_loss(torch.cat([good, good], dim=1), torch.cat([good, bad], dim=1))
    assert pair_loss.item() == pytest.approx(soft_dice_loss(good, bad).item() / 2, rel=1e-6)


def test_shape_errors_name_the_shapes():
    label = ball((10, 13, 11), 5)
    with pytest.raises(ValueError, match=r"\(1, 1, 20, 26, 23\) and \(1, 1, 20, 26, 22\)"):
        multiscale_dice_loss(label, label[..., :22], ISOTROPIC)
    with pytest.raises(ValueError, match=r"mask must have shape \(1, 1, 20, 26, 23\)"):
        multiscale_dice_loss(label, label, ISOTROPIC, mask=torch.ones(1, 2, *SHAPE))
    with pytest.raises(ValueError, match="spacing"):
        multiscale_dice_loss(label, label, (1.5, 1.5))


def grid_mm(shape_kji, spacing_ijk) -> torch.Tensor:
    """(3, k, j, i) world coordinates (x, y, z) = spacing * (i, j, k) of every voxel."""
    k, j, i = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape_kji), indexing="ij")
    return torch.stack([i * spacing_ijk[0], j * spacing_ijk[1], k * spacing_ijk[2]])


def test_bending_energy_is_zero_for_an_affine_field():
    spacing = (1.0, 1.5, 2.0)
    x = grid_mm((9, 10, 11), spacing)
    matrix = torch.tensor([[0.1, -0.2, 0.05], [0.3, 0.0, -0.1], [0.02, 0.2, 0.1]], dtype=torch.float64)
    offset = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)[:, None, None, None]
    field = torch.einsum("ab,b...->a...", matrix, x) + offset
    assert bending_energy(field[None], spacing).item() == pytest.approx(0.0, abs=1e-20)


def test_bending_energy_of_a_quadratic_field_is_exact_in_mm():
    spacing = (1.0, 1.5, 2.0)
    x = grid_mm((9, 10, 11), spacing)
    field = torch.zeros_like(x)
    field[0] = 0.3 * x[2] ** 2 + 0.1 * x[1] * x[2]  # u_x = 0.3 z^2 + 0.1 y z: u_x,zz = 0.6, u_x,yz = 0.1
    expected = (0.6**2 + 2 * 0.1**2) / 3  # mean over the three components
    assert bending_energy(field[None], spacing).item() == pytest.approx(expected, rel=1e-9)


def test_bending_energy_is_positive_for_a_wiggly_field():
    x = grid_mm((9, 10, 11), ISOTROPIC)
    field = torch.stack([torch.sin(x[1] / 3.0), torch.zeros_like(x[0]), torch.cos(x[0] / 2.0)])
    assert bending_energy(field[None], ISOTROPIC).item() > 1e-3


@pytest.mark.filterwarnings("ignore::UserWarning")  # MONAI's own indexing deprecation notes
def test_bending_energy_matches_monai_in_voxel_units_where_monai_uses_the_same_stencil():
    deform = pytest.importorskip("monai.losses.deform")
    if not hasattr(deform, "spatial_gradient_squared"):
        pytest.skip("this MONAI has the older wide stencil")
    field = torch.randn(2, 3, 7, 8, 9, dtype=torch.float64)
    h = 1.5
    torch.testing.assert_close(bending_energy(field, (h, h, h)), deform.BendingEnergyLoss()(field) / h**4)


def test_bending_energy_rejects_a_non_displacement():
    with pytest.raises(ValueError, match=r"\(B, 3, k, j, i\).*\(1, 2, 5, 5, 5\)"):
        bending_energy(torch.zeros(1, 2, 5, 5, 5), ISOTROPIC)


def test_registration_loss_combines_the_terms_with_their_weights():
    prediction, target = ball((10, 12, 10), 6), ball((11, 14, 13), 6)
    displacement = torch.randn(1, 3, *SHAPE, dtype=torch.float64)
    terms = registration_loss_terms(prediction, target, displacement, ISOTROPIC, bending_weight=0.5, dice_weight=2.0)
    torch.testing.assert_close(terms.dice, multiscale_dice_loss(prediction, target, ISOTROPIC))
    torch.testing.assert_close(terms.bending, bending_energy(displacement, ISOTROPIC))
    torch.testing.assert_close(terms.total, 2.0 * terms.dice + 0.5 * terms.bending)
    torch.testing.assert_close(registration_loss_terms(prediction, target, displacement, ISOTROPIC).total,
                               terms.dice + terms.bending)


def test_gradients_flow_to_the_prediction_and_the_displacement():
    target = ball((10, 13, 11), 5).float()
    prediction = ball((10, 13, 14), 5).float().requires_grad_()
    displacement = (0.1 * torch.randn(1, 3, *SHAPE)).requires_grad_()
    mask = torch.zeros(1, 1, *SHAPE)
    mask[:, :, :, ::4] = 1
    registration_loss_terms(prediction, target, displacement, ISOTROPIC, mask=mask).total.backward()
    for tensor in (prediction, displacement):
        assert torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().max() > 0
    assert math.isclose(prediction.grad[0, 0, :, 1].abs().max().item(), 0.0)  # unmasked plane: no gradient


def test_the_blurs_hand_written_backward_matches_finite_differences():
    """The blur's backward is the blur itself (a symmetric kernel with zero padding is self-adjoint)."""
    from MetaRegistrationLib.losses import _blur

    torch.manual_seed(0)
    volumes = torch.rand(1, 2, 5, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: _blur(v, [1.2, 0.0, 0.8]), (volumes,), eps=1e-6, atol=1e-8)
