"""Start-up: the entry points do not load the width-pruning libraries until a width callback is used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_entry_points_import_torch_pruning_on_use_only() -> None:
    code = ("import sys, experiments.train, experiments.depth_prune; "
            "assert 'torch_pruning' not in sys.modules, 'imported at start-up'; "
            "from callbacks import OneShotPrune; from lightning_modules.pruning.width import prunable_groups; "
            "import torch; from lightning_modules.models.mobilenet_v1 import MobileNetV1; "
            "prunable_groups(MobileNetV1(num_classes=3, width_mult=0.25), torch.zeros(1, 3, 32, 32)); "
            "assert 'torch_pruning' in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_lazy_callbacks_package_exports_every_class() -> None:
    import callbacks

    for name in callbacks.__all__:
        assert getattr(callbacks, name).__name__ == name
    assert set(callbacks.__all__) <= set(dir(callbacks))


def test_total_stride_on_the_meta_device_equals_a_real_pass() -> None:
    import timm
    import torch

    from experiments.run.checks import total_stride
    from lightning_modules.models.mobilenet_v1 import MobileNetV1

    def real_pass(net: torch.nn.Module) -> int:
        net.eval()
        with torch.no_grad():
            return 256 // int(net.forward_features(torch.zeros(1, 3, 256, 256)).shape[-1])

    nets = [MobileNetV1(num_classes=3, width_mult=0.25), MobileNetV1(num_classes=3, width_mult=0.25, stem_stride=1),
            MobileNetV1(num_classes=3, width_mult=0.25, num_blocks=4, head_channels=(16, 8)),
            timm.create_model("resnet10t", num_classes=3), timm.create_model("mobilenetv3_small_050", num_classes=3)]
    for net in nets:
        before = {k: v.clone() for k, v in net.state_dict().items()}
        assert total_stride(net) == real_pass(net)
        assert all(torch.equal(before[k], v) and v.device.type == "cpu" for k, v in net.state_dict().items())
    assert [total_stride(n) for n in nets[:3]] == [32, 16, 8]


def test_total_stride_falls_back_to_a_real_pass_for_data_dependent_nets() -> None:
    import torch
    from torch import nn

    from experiments.run.checks import total_stride

    class DataDependent(nn.Module):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            steps = int(x.new_ones(()).sum().item()) + 2  # needs a value: no meta kernel gives one
            return nn.functional.avg_pool2d(x, 2 ** steps)

    assert total_stride(DataDependent()) == 8
