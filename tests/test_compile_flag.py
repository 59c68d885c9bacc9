"""``ImageClassifier(compile=True)``: the compiled forward matches eager, adds no state, follows rebuilds."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.image_classifier import ImageClassifier


@pytest.mark.slow
def test_compiled_forward_matches_eager_and_follows_rebuilds() -> None:
    torch.manual_seed(0)
    eager = ImageClassifier(num_classes=3, width_mult=0.25).eval()
    compiled = ImageClassifier(num_classes=3, width_mult=0.25, compile=True).eval()
    compiled.load_state_dict(eager.state_dict())
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-4)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # the wrapper is not a submodule
    first = compiled._forward_net()
    compiled.rebuild_net(num_blocks=3, channels=compiled.net.channels[:4])
    assert compiled._forward_net() is not first  # a rebuilt net is compiled anew
    with torch.no_grad():
        assert compiled(x).shape == (2, 3)


def test_compile_is_off_by_default() -> None:
    model = ImageClassifier(num_classes=3, width_mult=0.25)
    assert model._forward_net() is model.net
