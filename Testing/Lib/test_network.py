"""Tests of MetaRegistrationLib.network on tiny synthetic tensors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from MetaRegistrationLib.geometry import Grid, warp
from MetaRegistrationLib.losses import soft_dice_loss
from MetaRegistrationLib.network import INPUT_CHANNELS, NetworkConfig, RegistrationNet, make_inputs
from MetaRegistrationLib.precision import bf16_supported

SHAPE = (13, 18, 15)  # (k, j, i): odd sizes, so padding and cropping are exercised


def ball(shape_kji, centre_kji, radius) -> torch.Tensor:
    """A (1, 1, k, j, i) solid ball of ``radius`` voxels."""
    axes = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape_kji), indexing="ij")
    squared = sum((a - c) ** 2 for a, c in zip(axes, centre_kji))
    return (squared <= radius**2).float()[None, None]


def test_config_round_trips_through_json():
    config = NetworkConfig(num_channel_initial=4, extract_levels=(0, 2), input_downsample=1)
    assert NetworkConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(config)))) == config


def test_config_rejects_unknown_keys_by_name():
    values = dataclasses.asdict(NetworkConfig()) | {"num_channels": 8}
    with pytest.raises(ValueError, match=r"^card.json: config.network.num_channels: unknown setting$"):
        NetworkConfig.from_dict(values, "card.json", prefix="config.network")


@pytest.mark.parametrize("values, message", [
    ({"extract_levels": []}, "extract_levels: tuple should have at least 1 item"),
    ({"extract_levels": [0, 0]}, "extract_levels: must not repeat a level (got (0, 0))"),
    ({"extract_levels": [-1, 2]}, "extract_levels.0: input should be greater than or equal to 0 (got -1)"),
    ({"extract_levels": [0, True]}, "extract_levels.1: input should be a valid integer (got True)"),
    ({"extract_levels": 3}, "extract_levels: input should be a valid tuple (got 3)"),
    ({"input_downsample": 0}, "input_downsample: input should be greater than or equal to 1 (got 0)"),
    ({"num_channel_initial": 2.5}, "num_channel_initial: input should be a valid integer (got 2.5)"),
    ({"num_channel_initial": "8"}, "num_channel_initial: input should be a valid integer (got '8')"),
    ({"in_channels": True}, "in_channels: input should be a valid integer (got True)"),
    ({"first_kernel_size": 4}, "first_kernel_size: must be odd (got 4)"),
])
def test_config_rejects_invalid_values_in_one_line_naming_the_key(values, message):
    with pytest.raises(ValueError) as raised:
        NetworkConfig.from_dict(values)
    assert str(raised.value).startswith(f"network config: {message}") and "\n" not in str(raised.value)
    with pytest.raises(ValueError):  # built directly, too
        NetworkConfig(**{key: tuple(v) if isinstance(v, list) else v for key, v in values.items()})


def test_first_kernel_size_applies_to_the_finest_level_only():
    net = RegistrationNet(NetworkConfig(num_channel_initial=2, first_kernel_size=7))
    kernels = [[tuple(m.weight.shape[2:]) for m in block.modules() if isinstance(m, torch.nn.Conv3d)]
               for block in net.local_net.encode_convs]
    assert kernels[0] == [(7, 7, 7)] * 3
    assert all(shape == (3, 3, 3) for level in kernels[1:] for shape in level)


def test_default_in_channels_match_make_inputs():
    assert NetworkConfig().in_channels == len(INPUT_CHANNELS)
    inputs = make_inputs(*(torch.rand(2, 1, *SHAPE) for _ in range(5)))
    assert inputs.shape == (2, NetworkConfig().in_channels, *SHAPE)


def test_output_shape_and_near_identity_start():
    torch.manual_seed(0)
    net = RegistrationNet(NetworkConfig(num_channel_initial=4))
    displacement = net(torch.rand(2, 5, *SHAPE))
    assert displacement.shape == (2, 3, *SHAPE)
    assert torch.isfinite(displacement).all()
    assert 0 < displacement.abs().max() < 0.05  # mm: small, but not exactly zero (every layer gets a gradient)


def test_full_resolution_config_keeps_the_shape():
    net = RegistrationNet(NetworkConfig(num_channel_initial=2, extract_levels=(0, 1), input_downsample=1))
    assert net(torch.rand(1, 5, 5, 6, 7)).shape == (1, 3, 5, 6, 7)


@pytest.mark.parametrize("shape", [(1, 4, *SHAPE), (5, *SHAPE), (1, 5, 13, 18)])
def test_wrong_input_shape_names_expected_and_actual(shape):
    net = RegistrationNet(NetworkConfig(num_channel_initial=2))
    with pytest.raises(ValueError, match=r"\(B, 5, k, j, i\).*" + r"\(" + ", ".join(map(str, shape)) + r"\)"):
        net(torch.rand(*shape))


def test_no_batch_statistics_so_train_and_eval_agree():
    net = RegistrationNet(NetworkConfig(num_channel_initial=2))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert list(net.buffers()) == []
    inputs = torch.rand(1, 5, *SHAPE)
    torch.testing.assert_close(net.train()(inputs), net.eval()(inputs))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = RegistrationNet(NetworkConfig(num_channel_initial=2))
    net(torch.rand(1, 5, *SHAPE)).square().mean().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    first = net.local_net.encode_convs[0][0].conv.weight.grad
    assert first.abs().max() > 0


def test_a_few_adam_steps_align_a_shifted_ball():
    """The network, warp and a label loss together learn a 3 mm shift."""
    grid = Grid.from_arrays(SHAPE[::-1], (1.5, 1.5, 1.5), (0.0, 0.0, 0.0))
    fixed = ball(SHAPE, (6, 9, 7), 4.0)
    moving = ball(SHAPE, (6, 9, 9), 4.0)  # 2 voxels = 3 mm further along i
    initial = torch.eye(4)
    inputs = make_inputs(fixed * 255, fixed, torch.ones_like(fixed), moving * 255, moving)
    torch.manual_seed(0)
    net = RegistrationNet(NetworkConfig(num_channel_initial=4))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = soft_dice_loss(warp(moving, grid, grid, initial, net(inputs)), fixed)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_make_inputs_order_masking_and_scaling():
    fixed_image = torch.full((1, 1, *SHAPE), 255.0)
    fixed_gland = torch.ones(1, 1, *SHAPE)
    mask = torch.zeros(1, 1, *SHAPE)
    mask[:, :, :, 4] = 1  # one acquired plane of constant j
    moving_image = torch.full((1, 1, *SHAPE), 51.0)
    moving_gland = torch.full((1, 1, *SHAPE), 0.5)
    inputs = make_inputs(fixed_image, fixed_gland, mask, moving_image, moving_gland)
    torch.testing.assert_close(inputs[:, 0], mask[:, 0])  # TRUS image /255, only where acquired
    torch.testing.assert_close(inputs[:, 1], mask[:, 0])  # TRUS gland, only where acquired
    torch.testing.assert_close(inputs[:, 2], mask[:, 0])
    torch.testing.assert_close(inputs[:, 3], torch.full((1, *SHAPE), 0.2))
    torch.testing.assert_close(inputs[:, 4], torch.full((1, *SHAPE), 0.5))


def test_make_inputs_rejects_mismatched_shapes():
    good = torch.rand(1, 1, *SHAPE)
    with pytest.raises(ValueError, match="moving_gland_on_fixed must be"):
        make_inputs(good, good, good, good, torch.rand(1, 1, 13, 18, 14))
    with pytest.raises(ValueError, match="acquired_mask must be"):
        make_inputs(good, good, torch.rand(1, 2, *SHAPE), good, good)


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no fast bf16")
def test_bf16_gradients_of_a_small_input_repeat_exactly_and_follow_fp32():
    """An input of 17 voxels along k (its deepest level would be 2 voxels deep without MIN_DEEPEST_SIZE) has the
    same bf16 gradient at every backward pass, close to the fp32 one: torch 2.13's bf16 convolution weight
    gradient on the CPU is garbage at a depth of 2."""
    torch.manual_seed(0)
    net = RegistrationNet()
    inputs = torch.rand(1, 5, 17, 40, 40)

    def gradient(precision: str) -> torch.Tensor:
        net.precision = precision
        net.zero_grad()
        (net(inputs) ** 2).sum().backward()
        return torch.cat([p.grad.reshape(-1) for p in net.parameters()])

    first = gradient("bf16")
    for _ in range(3):
        assert torch.equal(gradient("bf16"), first)
    reference = gradient("fp32")
    assert float((first - reference).norm() / reference.norm()) < 0.05
