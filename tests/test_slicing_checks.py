"""Width pruning on structures torch-pruning cannot slice: the groups that reach them keep their channels (a
warning says which and why), every other group is sliced, and the sliced network computes exactly what the
unpruned one computes with the removed channels switched off. A structure nobody screens for ends in one
clear error instead of a broken network.

Each tiny network stands for a timm family that broke width pruning before the screen: a ResNeXt / RegNet
bottleneck (grouped convolution), GhostNet's ``cat(...)[:, :out]``, MixNet's ``torch.split`` with stored
sizes, ReXNet's ``x[:, :C] += shortcut``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_modules.pruning.criteria import make_criterion
from lightning_modules.pruning.width import (
    apply_plan,
    channel_scores,
    plan_pruning,
    prunable_groups,
    prune_model,
)


def cbr(cin: int, cout: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class Net(nn.Module):
    """stem (3 → 8) → ``body`` → ``tail`` (→ 8 channels) → pool → linear."""

    def __init__(self, body: nn.Module, tail_in: int) -> None:
        super().__init__()
        self.stem, self.body, self.tail = cbr(3, 8, 3), body, cbr(tail_in, 8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.tail(self.body(self.stem(x))).mean((2, 3)))


class Grouped(nn.Module):  # ResNeXt / RegNet bottleneck, residual
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = cbr(8, 16), cbr(16, 16, 3, groups=4), cbr(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c(self.b(self.a(x)))


class Ghost(nn.Module):  # GhostNet's module: half the channels from a cheap depthwise op, then a slice
    def __init__(self) -> None:
        super().__init__()
        self.primary, self.cheap = cbr(8, 6), cbr(6, 6, 3, groups=6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], 1)[:, :10]


class Mixed(nn.Module):  # MixNet's MixedConv2d: split sizes stored on the module
    def __init__(self) -> None:
        super().__init__()
        self.expand, self.splits = cbr(8, 12), [4, 8]
        self.k3, self.k5 = cbr(4, 4, 3, groups=4), cbr(8, 8, 5, groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.expand(x), self.splits, 1)
        return torch.cat([self.k3(a), self.k5(b)], 1)


class Partial(nn.Module):  # ReXNet's partial residual
    def __init__(self) -> None:
        super().__init__()
        self.wide = cbr(8, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.wide(x).clone()
        y[:, :8] += x
        return y


class StoredCount(nn.Module):  # a channel count the graph cannot see (a constant tensor built in forward)
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.channels = cbr(8, 16), 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.linspace(0.5, 1.5, self.channels).view(1, -1, 1, 1)


CASES = {  # body, tail input channels, groups that must keep their channels, groups that must be sliced
    "grouped": (Grouped, 8, {"body.a.0", "body.b.0"}, {"stem.0", "tail.0"}),
    "ghost": (Ghost, 10, {"body.primary.0"}, {"stem.0", "tail.0"}),
    "mixed": (Mixed, 12, {"body.expand.0"}, {"stem.0", "tail.0"}),
    "partial": (Partial, 12, {"stem.0"}, {"tail.0"}),  # the stem and body.wide: one group
}
X = torch.randn(2, 3, 16, 16)


def trained_like(net: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen))
    return net.eval()


@pytest.mark.parametrize("case", list(CASES))
def test_groups_torch_pruning_cannot_slice_keep_their_channels_and_the_rest_is_sliced_exactly(case: str) -> None:
    body, tail_in, kept, sliced = CASES[case]
    torch.manual_seed(0)
    net = trained_like(Net(body(), tail_in))
    with pytest.warns(UserWarning, match="width pruning keeps every channel") as record:
        groups = prunable_groups(net, X[:1])
    names = {g.name for g in groups}
    assert sliced <= names and not kept & names, names
    message = str(record[0].message)
    assert all(name in message for name in kept), message

    plan = plan_pruning(channel_scores(groups, make_criterion("l2_norm")), 0.5)
    assert all(plan[name] for name in sliced)
    # the reference: the unpruned net with the planned channels switched off in every BatchNorm that produces
    # them (scale and shift zeroed, so ReLU(BN(conv)) is exactly 0 there, also across a residual addition)
    masked = copy.deepcopy(net)
    names, modules = {m: n for n, m in net.named_modules()}, dict(masked.named_modules())
    for g in groups:
        removed = set(plan[g.name])
        for layer, idxs, root_idxs in g.layers:
            if isinstance(layer, nn.BatchNorm2d):
                off = [i for i, r in zip(idxs, root_idxs, strict=True) if r in removed]
                modules[names[layer]].weight.data[off] = 0
                modules[names[layer]].bias.data[off] = 0
    before = {name: dict(net.named_modules())[name].out_channels for name in sliced | kept}
    apply_plan(groups, plan, X[:1])
    after = {name: dict(net.named_modules())[name].out_channels for name in sliced | kept}
    assert after == {name: before[name] - len(plan.get(name, ())) for name in before}
    with torch.no_grad():
        torch.testing.assert_close(net(X), masked(X), atol=1e-5, rtol=1e-5)


def test_a_network_with_no_group_left_is_refused() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, groups=2, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with pytest.raises(ValueError, match=r"no channel group of Sequential can be width-pruned: "
                                         r"0: it reaches the grouped convolution 3 \(groups=2\)"):
        prunable_groups(net, X[:1])


def test_a_channel_count_the_graph_cannot_see_ends_in_one_clear_error() -> None:
    net = Net(StoredCount(), 16).eval()
    with pytest.raises(ValueError, match=r"width pruning left a network that fails on an input of shape "
                                         r"\(1, 3, 16, 16\): .*Keep the channels of the failing layer"):
        prune_model(net, make_criterion("l2_norm"), 0.5, X[:1])


@pytest.mark.parametrize("name", ["regnetx_002", "ghostnet_050"])
def test_timm_families_torch_pruning_cannot_fully_slice_prune_run_and_rebuild(name: str) -> None:
    """RegNet (grouped convolutions) and GhostNet (channel slices): a one-shot prune keeps the groups it
    cannot slice, the rest shrinks, and the sliced network rebuilds from its description alone."""
    from lightning_modules.backbones.timm import TimmAdapter

    adapter = TimmAdapter(name, None, 5)
    torch.manual_seed(0)
    net = trained_like(adapter.build({}))
    before = sum(p.numel() for p in net.parameters())
    with pytest.warns(UserWarning, match=r"width pruning keeps every channel of \d+ of \d+ groups"):
        prune_model(net, make_criterion("l2_norm"), 0.5, X[:1])
    assert sum(p.numel() for p in net.parameters()) < 0.8 * before
    rebuilt = adapter.build(adapter.describe(net)).eval()
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(X), net(X))
