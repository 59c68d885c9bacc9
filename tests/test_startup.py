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
