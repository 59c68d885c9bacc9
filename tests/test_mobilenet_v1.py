"""MobileNetV1: parameter and MAC counts of the reference architecture, constructor-described variants."""

import pytest
import torch

from lightning_modules.deploy.profiling import count_macs, count_params
from lightning_modules.models.mobilenet_v1 import NUM_BLOCKS, MobileNetV1, mobilenet_v1_channels


@pytest.mark.parametrize(("num_classes", "expected"), [(10, 3_217_226), (1000, 4_231_976)])
def test_param_count_matches_reference(num_classes: int, expected: int) -> None:
    assert count_params(MobileNetV1(num_classes=num_classes)) == expected


def test_macs_at_224_match_paper() -> None:
    macs = count_macs(MobileNetV1(num_classes=1000), image_size=224)
    assert abs(macs - 568.7e6) < 0.1e6, macs


@pytest.mark.parametrize("size", [32, 128, 224])
def test_forward_at_resolutions(size: int) -> None:
    net = MobileNetV1(num_classes=10).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("width", "first", "last"), [(0.5, 16, 512), (0.25, 8, 256), (0.75, 24, 768)])
def test_width_multiplier_channels(width: float, first: int, last: int) -> None:
    channels = mobilenet_v1_channels(width)
    assert channels[0] == first and channels[-1] == last
    net = MobileNetV1(num_classes=10, width_mult=width)
    assert net.head.fc.in_features == last


def test_explicit_channels_override_width() -> None:
    channels = [8 + i for i in range(NUM_BLOCKS + 1)]
    net = MobileNetV1(num_classes=10, width_mult=0.25, channels=channels)
    assert net.channels == channels
    assert [b.out_channels for b in net.blocks] == channels[1:]
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_feature_modules_tap_stem_and_every_block() -> None:
    net = MobileNetV1(num_classes=10)
    shapes = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape)))
             for m in net.feature_modules]
    net(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert len(shapes) == NUM_BLOCKS + 1
    assert shapes[0] == (1, 32, 112, 112)
    assert shapes[6] == (1, 512, 14, 14)  # after block 6: the replication's cut point
    assert shapes[-1] == (1, 1024, 7, 7)


def test_kept_blocks_truncate_a_full_channel_list() -> None:
    net = MobileNetV1(num_classes=10, num_blocks=6, channels=mobilenet_v1_channels(1.0))
    assert len(net.blocks) == 6 and net.channels[-1] == 512


@pytest.mark.parametrize("kwargs", [{"num_blocks": 14}, {"num_blocks": 3, "channels": [8, 8]}])
def test_invalid_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        MobileNetV1(**kwargs)


def test_stem_stride_one_keeps_more_resolution() -> None:
    net = MobileNetV1(num_classes=10, stem_stride=1)
    assert net.forward_features(torch.randn(1, 3, 32, 32)).shape[-1] == 2
    assert count_macs(net, 32) > 3 * count_macs(MobileNetV1(num_classes=10), 32)
