"""The network's arithmetic: bf16 autocast where the hardware has it, fp32 weights, output, warps and losses."""

from __future__ import annotations

import pytest
import torch

from MetaRegistrationLib import precision
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.network import NetworkConfig, RegistrationNet

CPU = torch.device("cpu")


def test_auto_falls_back_to_fp32_without_bf16_hardware(monkeypatch):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    assert precision.resolve_precision("auto", CPU) == "fp32"
    with pytest.raises(InputError, match="^precision 'bf16': cpu has no fast bf16 arithmetic here"):
        precision.resolve_precision("bf16", CPU)
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)
    assert precision.resolve_precision("auto", CPU) == "bf16"
    assert precision.resolve_precision("fp32", CPU) == "fp32"


def test_an_unknown_precision_is_one_line():
    with pytest.raises(InputError, match="^precision 'fp16': choose one of auto, fp32, bf16$"):
        precision.resolve_precision("fp16", CPU)


def test_bf16_forward_returns_an_fp32_displacement_close_to_the_fp32_one():
    torch.manual_seed(0)
    network = RegistrationNet(NetworkConfig(num_channel_initial=4))
    with torch.no_grad():  # a larger output than the near-identity initialisation, so the comparison means something
        for layer in network.local_net.output_block.modules():
            if isinstance(layer, torch.nn.Conv3d):
                layer.weight.normal_(std=0.05)
    inputs = torch.rand(1, network.config.in_channels, 20, 24, 18)
    reference = network(inputs)
    network.precision = "bf16"
    mixed = network(inputs)
    assert mixed.dtype == torch.float32 and mixed.shape == reference.shape
    assert all(p.dtype == torch.float32 for p in network.parameters())
    error = (mixed - reference).abs().max() / reference.abs().max()
    assert 0 < error < 0.05  # bf16 keeps about 3 significant digits; 0 would mean autocast did nothing


def test_a_session_adapts_in_the_precision_it_resolved(monkeypatch):
    from MetaRegistrationLib.adaptation import AdaptationSession
    from MetaRegistrationLib.phantom import make_phantom_case
    from MetaRegistrationLib.registration import run_sweep, sweep_frames

    case = make_phantom_case(seed=0, scale=0.3)[0]
    torch.manual_seed(0)
    network = RegistrationNet(NetworkConfig(num_channel_initial=4))
    calls = []
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: calls.append(kwargs) or torch.amp.autocast(
        *args, **kwargs))
    for asked, resolved in (("fp32", "fp32"), ("auto", precision.resolve_precision("auto", CPU))):
        calls.clear()
        session = AdaptationSession(network, case.moving_image, case.moving_labels, case.fixed_image.grid,
                                    precision=asked)
        assert session.precision == session.model.precision == resolved
        list(run_sweep(session, sweep_frames(case, 3)))
        assert calls and all(call["enabled"] == (resolved == "bf16") for call in calls)

