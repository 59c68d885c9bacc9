"""The int8 sensitivity probe on bare modules: TFLite's activation grid, and a planted wide channel that
starves the others of int8 levels is found and ranked first."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_modules.deploy.int8_sensitivity import (
    activation_ranges,
    channel_spread,
    fake_int8,
    fold_batchnorms,
    int8_params,
    tensor_sensitivity,
)


def test_the_grid_is_tflite_s_asymmetric_int8() -> None:
    scale, zero_point = int8_params(-1.0, 3.0)
    assert scale == pytest.approx(4 / 255) and zero_point == -64  # round(-128 + 1 / (4/255))
    assert int8_params(0.5, 2.0) == (pytest.approx(2 / 255), -128)  # the range is widened to hold 0
    x = torch.linspace(-1, 3, 10_001)
    q = fake_int8(x, -1.0, 3.0)
    assert len(torch.unique(q)) <= 256 and (q - x).abs().max() <= scale / 2 + 1e-6
    assert fake_int8(torch.tensor([0.0]), -1.0, 3.0).item() == 0.0  # zero is exact


class Scale(nn.Module):
    """Multiplies each channel by a fixed factor (a BatchNorm with one huge gamma)."""

    def __init__(self, factors: list[float]) -> None:
        super().__init__()
        self.register_buffer("factors", torch.tensor(factors).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factors


def planted_net(wide: float) -> nn.Sequential:
    """conv → channel scale (channel 0 × ``wide``) → classifier over the feature map that ignores channel 0."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    classifier = nn.Linear(8 * 8 * 8, 5)
    with torch.no_grad():
        classifier.weight[:, :64] = 0.0  # channel 0's 8×8 features: the decision rests on the narrow channels
    return nn.Sequential(conv, Scale([wide] + [1.0] * 7), nn.Flatten(), classifier).eval()


def labelled(net: nn.Module, n: int = 512) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    images = torch.randn(n, 3, 8, 8)
    with torch.no_grad():
        labels = net(images).argmax(1)  # the float net is right by construction
    assert len(labels.unique()) >= 4  # and its answers vary with the input
    return [(images, labels)]


def test_a_wide_channel_is_ranked_first_and_its_spread_measured() -> None:
    net = planted_net(wide=500.0)
    batches = labelled(net)
    calibration = [x for x, _ in batches]
    spread = channel_spread(net, calibration)
    assert spread["1"] > 100 and spread["0"] < 10  # the scaled output, not the conv's
    ranges = activation_ranges(net, calibration)
    assert set(ranges) == {"0", "1", "3"}  # every leaf with an output of its own (not Flatten)
    base, everything, costs = tensor_sensitivity(net, calibration, batches)
    assert base == 1.0 and everything < 0.5
    assert costs[0].name == "1" and costs[0].drop > 0.5  # the wide tensor
    assert costs[0].spread is not None and costs[0].spread > 100
    assert {c.name: c.drop for c in costs}["0"] < 0.05  # the conv's own output quantises well


def test_without_a_wide_channel_int8_keeps_the_accuracy() -> None:
    net = planted_net(wide=1.0)
    batches = labelled(net)
    base, everything, costs = tensor_sensitivity(net, [x for x, _ in batches], batches)
    assert base == 1.0 and everything > 0.95 and costs[0].drop < 0.05


def test_batchnorms_after_convolutions_are_folded_and_the_function_kept() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.BatchNorm2d(6),
                        nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4))
    for norm in (net[1], net[3], net[5]):  # trained-looking statistics
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 3)
        norm.weight.data.uniform_(0.5, 40)
        norm.bias.data.uniform_(-1, 1)
    net.eval()
    x = torch.randn(4, 3, 10, 10)
    folded, pairs = fold_batchnorms(net, x[:1])
    assert pairs == [("0", "1"), ("4", "5")]  # the BatchNorm after the ReLU reads no convolution
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)
        assert torch.equal(folded[1](folded[0](x)), folded[0](x))  # the folded norm is an identity
    assert net[1].weight.max() > 1  # the original is untouched


def test_the_command_ranks_a_checkpoint_s_tensors(tmp_path, capsys) -> None:
    import json

    from experiments.bench import int8_sensitivity as command
    from lightning_modules.image_classifier import ImageClassifier
    from tests.helpers import fake_data
    from tests.helpers.weights import save_checkpoint, trained_like

    root = fake_data.make_image_folder(tmp_path / "cifar", {"train": 12, "test": 6})
    module = ImageClassifier(num_classes=3, width_mult=0.25)
    trained_like(module.net)
    ckpt = save_checkpoint(module, tmp_path / "net.ckpt")
    out = tmp_path / "sensitivity.json"
    result = command.main(["--ckpt", str(ckpt), "--data_root", str(root), "--calib_images", "12",
                           "--eval_images", "9", "--top", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    names = [t["name"] for t in result["tensors"]]
    norms = {n for n, m in module.net.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert len(names) == len(set(names)) > 10 and norms and not norms & set(names)  # folded into their convs
    drops = [t["drop"] for t in result["tensors"]]
    assert drops == sorted(drops, reverse=True) and result["eval_images"] == 9
    printed = capsys.readouterr().out
    (head,) = [line for line in printed.splitlines() if line.startswith("fp32 ")]
    assert head.endswith("| 9 test images") and names[0] in printed
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--ckpt", str(tmp_path / "none.ckpt")])
    assert str(exit_info.value.code).startswith("error:") and "none.ckpt" in str(exit_info.value.code)
