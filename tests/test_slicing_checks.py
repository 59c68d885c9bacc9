"""Width pruning on structures torch-pruning cannot slice: the groups that reach them keep their channels (a
warning says which and why), every other group is sliced, and the sliced network computes exactly what the
unpruned one computes with the removed channels switched off. A structure nobody screens for ends in one
clear error instead of a broken network. Grouped convolutions reached position for position are sliced,
the same positions leaving every group of channels.

Each tiny network stands for a timm family that broke width pruning before the screen: a ResNeXt / RegNet
bottleneck (grouped convolution), GhostNet's ``cat(...)[:, :out]``, MixNet's ``torch.split`` with stored
sizes, ReXNet's ``x[:, :C] += shortcut``."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_modules.pruning.admm import kept_rows
from lightning_modules.pruning.criteria import make_criterion
from lightning_modules.pruning.slicing_checks import is_grouped
from lightning_modules.pruning.width import (
    apply_plan,
    channel_scores,
    keep_count,
    lowest_channels,
    plan_pruning,
    prunable_groups,
    prune_model,
)
from tests.helpers.tiny_fit import tiny_datamodule, tiny_folder, tiny_trainer, width_method


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


class ConcatGrouped(nn.Module):  # a grouped convolution fed by a concatenation: its groups mix two producers
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = cbr(8, 6), cbr(8, 6), cbr(12, 12, 3, groups=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


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
    "concat_grouped": (ConcatGrouped, 12, {"body.a.0", "body.b.0"}, {"stem.0", "body.c.0", "tail.0"}),
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


def switched_off(net: nn.Module, groups: list, plan: dict[str, list[int]]) -> nn.Module:
    """The reference: a copy of the unpruned ``net`` with the planned channels switched off in every BatchNorm
    that produces them (scale and shift zeroed, so ReLU(BN(conv)) is exactly 0 there, also across a residual
    addition)."""
    masked = copy.deepcopy(net)
    names, modules = {m: n for n, m in net.named_modules()}, dict(masked.named_modules())
    for g in groups:
        removed = set(plan[g.name])
        for layer, idxs, root_idxs in g.layers:
            if isinstance(layer, nn.BatchNorm2d):
                off = [i for i, r in zip(idxs, root_idxs, strict=True) if r in removed]
                modules[names[layer]].weight.data[off] = 0
                modules[names[layer]].bias.data[off] = 0
    return masked


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

    plan = plan_pruning(channel_scores(groups, make_criterion("l2_norm")), 0.5,
                        channel_groups={g.name: g.channel_groups for g in groups})
    assert all(plan[name] for name in sliced)
    masked = switched_off(net, groups, plan)
    before = {name: dict(net.named_modules())[name].out_channels for name in sliced | kept}
    apply_plan(groups, plan, X[:1])
    after = {name: dict(net.named_modules())[name].out_channels for name in sliced | kept}
    assert after == {name: before[name] - len(plan.get(name, ())) for name in before}
    with torch.no_grad():
        torch.testing.assert_close(net(X), masked(X), atol=1e-5, rtol=1e-5)


class OnlyUnsliceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[:, :10].mean((2, 3))


def test_a_network_with_no_group_left_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no channel group of OnlyUnsliceable can be width-pruned: "
                                         r"conv: its channels pass a slice along the channels"):
        prunable_groups(OnlyUnsliceable(), X[:1])


def test_a_channel_count_the_graph_cannot_see_ends_in_one_clear_error() -> None:
    net = Net(StoredCount(), 16).eval()
    with pytest.raises(ValueError, match=r"width pruning left a network that fails on an input of shape "
                                         r"\(1, 3, 16, 16\): .*Keep the channels of the failing layer"):
        prune_model(net, make_criterion("l2_norm"), 0.5, X[:1])


@pytest.mark.parametrize(("name", "kept"), [("regnetx_002", 0), ("ghostnet_050", 6), ("rexnet_100", 11)])
def test_timm_families_torch_pruning_cannot_fully_slice_prune_run_and_rebuild(name: str, kept: int) -> None:
    """RegNet (grouped convolutions, sliced group-symmetrically), GhostNet (channel slices) and ReXNet
    (partial residuals, on which torch-pruning's tracing of one group never ends): the groups that cannot be
    sliced keep their channels, a one-shot prune shrinks the rest, and the sliced network rebuilds from its
    description alone."""
    import warnings

    from lightning_modules.backbones.timm import TimmAdapter

    adapter = TimmAdapter(name, None, 5)
    torch.manual_seed(0)
    net = trained_like(adapter.build({}))
    before = sum(p.numel() for p in net.parameters())
    grouped = {n: m.groups for n, m in net.named_modules() if is_grouped(m)}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        prune_model(net, make_criterion("l2_norm"), 0.5, X[:1])
    messages = [str(w.message) for w in record if "width pruning keeps" in str(w.message)]
    assert len(messages) == (1 if kept else 0), messages
    assert all(m.startswith(f"width pruning keeps every channel of {kept} of") for m in messages), messages
    assert sum(p.numel() for p in net.parameters()) < (0.35 if not kept else 0.8) * before
    modules = dict(net.named_modules())
    assert {n: modules[n].groups for n in grouped} == grouped  # every grouped convolution keeps its groups
    rebuilt = adapter.build(adapter.describe(net)).eval()
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(X), net(X))


# --------------------------------------------------------------------------- grouped convolutions
def symmetric(removed: list[int], channels: int, groups: int) -> bool:
    """``removed`` takes the same positions from each of ``groups`` equal chunks of ``channels``."""
    chunk = channels // groups
    positions = {i % chunk for i in removed}
    return sorted(removed) == sorted(p + k * chunk for p in positions for k in range(groups))


@pytest.mark.parametrize(("channels", "groups", "count"), [(12, 1, 5), (12, 3, 6), (24, 4, 8), (8, 8, 0)])
def test_lowest_channels_removes_the_same_positions_of_every_chunk_those_of_lowest_summed_score(
    channels: int, groups: int, count: int
) -> None:
    scores = torch.rand(channels, generator=torch.Generator().manual_seed(channels + groups))
    removed = lowest_channels(scores, count, groups)
    assert len(removed) == count and removed == sorted(set(removed)) and symmetric(removed, channels, groups)
    summed = scores.view(groups, -1).sum(0)
    chunk = channels // groups
    gone = {i % chunk for i in removed}
    stay = set(range(chunk)) - gone
    assert not gone or not stay or max(summed[list(gone)]) <= min(summed[list(stay)])
    if groups == 1:
        assert removed == sorted(torch.argsort(scores, stable=True)[:count].tolist())


def test_lowest_channels_refuses_a_count_that_cannot_leave_every_chunk_alike() -> None:
    with pytest.raises(ValueError, match="cannot leave 4 equal groups alike"):
        lowest_channels(torch.rand(16), 6, 4)


@pytest.mark.parametrize(("channels", "groups", "sparsity", "round_to"),
                         [(24, 3, 0.5, 1), (48, 6, 0.75, 8), (64, 4, 0.5, 8), (32, 16, 0.5, 8), (24, 24, 0.9, 1)])
def test_keep_count_of_a_chunked_group_is_a_whole_number_per_chunk(
    channels: int, groups: int, sparsity: float, round_to: int
) -> None:
    keep = keep_count(channels, sparsity, round_to, channel_groups=groups)
    assert keep % groups == 0 and groups <= keep <= channels
    assert abs(keep - channels * (1 - sparsity)) <= math.lcm(round_to, groups)
    chunk = channels // groups
    if chunk % (round_to // math.gcd(round_to, groups)) == 0:
        assert keep % round_to == 0 or keep == channels


def test_kept_rows_of_chunked_filters_is_the_euclidean_projection_onto_chunk_symmetric_supports() -> None:
    """ADMM's Z-step for a group that reaches a grouped convolution: of every support that keeps the same
    positions of each chunk, the one :func:`kept_rows` picks is nearest to the weights (brute force)."""
    import itertools

    w = torch.randn(12, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    groups, keep = 3, 6
    kept = kept_rows(w, keep, groups).tolist()
    assert symmetric(sorted(set(range(12)) - set(kept)), 12, groups)

    def distance(rows: list[int]) -> float:
        z = torch.zeros_like(w)
        z[rows] = w[rows]
        return float((w - z).norm())

    supports = [[p + 4 * k for p in ps for k in range(groups)] for ps in itertools.combinations(range(4), 2)]
    assert distance(kept) == pytest.approx(min(distance(s) for s in supports))


def test_a_grouped_bottleneck_is_sliced_alike_in_every_group_and_computes_the_masked_network() -> None:
    """ResNeXt / RegNet: the channels into and out of a grouped convolution lose the same positions of each
    group, the convolution keeps its ``groups``, and the sliced network equals the unpruned one with the
    removed channels switched off."""
    torch.manual_seed(0)
    net = trained_like(Net(Grouped(), 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is kept back
        groups = prunable_groups(net, X[:1])
    chunks = {g.name: g.channel_groups for g in groups}
    assert chunks == {"stem.0": 1, "body.a.0": 4, "body.b.0": 4, "tail.0": 1}
    plan = plan_pruning(channel_scores(groups, make_criterion("l1_norm")), 0.5, channel_groups=chunks)
    assert all(len(plan[n]) == 8 and symmetric(plan[n], 16, 4) for n in ("body.a.0", "body.b.0"))
    masked = switched_off(net, groups, plan)
    apply_plan(groups, plan, X[:1])
    b = net.body.b[0]
    assert (b.in_channels, b.out_channels, b.groups, tuple(b.weight.shape[:2])) == (8, 8, 4, (8, 2))
    with torch.no_grad():
        torch.testing.assert_close(net(X), masked(X), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["oneshot_l2_norm", "oneshot_fpgm", "oneshot_hrank", "bn_slimming", "admm",
                                    "sfp", "gradual", "resrep"])
def test_every_width_method_slices_regnet_grouped_convolutions_alike_in_every_group(
    method: str, tmp_path: Path
) -> None:
    """Each width method on timm's RegNetX-200MF (every bottleneck a grouped convolution): the grouped
    convolutions lose channels, keep their groups, and the pruned checkpoint reloads with equal outputs."""
    from lightning_modules.image_classifier import ImageClassifier

    torch.manual_seed(0)
    module = ImageClassifier(backbone="regnetx_002", num_classes=3, lr=0.01)
    grouped = {n: (m.groups, m.out_channels) for n, m in module.net.named_modules() if is_grouped(m)}
    epochs = 3 if method == "gradual" else 2
    out = tmp_path / "run"
    trainer = tiny_trainer(out, epochs, [width_method(method)], limit_train_batches=2)
    trainer.fit(module, tiny_datamodule(tiny_folder(tmp_path / "data"), batch_size=8))
    modules = dict(module.net.named_modules())
    assert all(modules[n].groups == g for n, (g, _) in grouped.items())
    assert sum(modules[n].out_channels for n in grouped) <= 0.6 * sum(c for _, c in grouped.values())
    reloaded = ImageClassifier.load_from_checkpoint(out / f"epoch={epochs - 1}.ckpt", map_location="cpu")
    assert reloaded.arch == module.arch
    module.eval(), reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(X), module(X))


def test_resrep_masks_the_same_positions_of_every_group_and_merging_then_slicing_is_lossless() -> None:
    """ResRep on a grouped bottleneck: every channel group gets compactors, those reaching the grouped
    convolution carry its ``g``, their targets and masks take the same positions of each chunk at every
    ramp step, and the merged, sliced network computes what the network with compactors computes once the
    masked rows are zero."""
    from lightning_modules.models.layers import Compactor
    from lightning_modules.pruning.compactors import (
        compactor_channel_groups,
        compactor_groups,
        compactor_positions,
        install_compactors,
        merge_compactors,
    )
    from lightning_modules.pruning.resrep import removal_plan, removal_targets, update_masks

    torch.manual_seed(0)
    net = trained_like(Net(Grouped(), 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is kept back
        positions = compactor_positions(net, X[:1])
    assert set(positions) == {"stem.0", "body.a.0", "body.b.0", "tail.0"}
    install_compactors(net, positions)
    chunks = compactor_channel_groups(net)
    assert chunks == {"body.a.0": 4, "body.b.0": 4}
    compactors = compactor_groups(net)
    for c in (m for m in net.modules() if isinstance(m, Compactor)):  # trained compactors: not the identity
        c.weight.data.add_(0.2 * torch.randn_like(c.weight) * (c.weight != 0))
    targets = removal_targets(compactors, 0.5, channel_groups=chunks)
    assert targets["body.a.0"] == targets["body.b.0"] == 8
    for fraction in (0.1, 0.3, 0.6, 1.0):
        masks = update_masks(compactors, targets, fraction, channel_groups=chunks)
        assert all(len(masks[n]) % 4 == 0 and symmetric(masks[n], 16, 4) for n in chunks)
    assert all(len(masks[n]) == targets[n] for n in masks)
    with torch.no_grad():  # what ResRep's forgetting reaches: the masked rows at zero
        for name, group in compactors.items():
            for c in group:
                c.weight[masks[name]] = 0.0
    net.eval()
    with torch.no_grad():
        expected = net(X)
    merged = merge_compactors(net).eval()
    groups = prunable_groups(merged, X[:1])
    apply_plan(groups, removal_plan(masks), X[:1])
    b = merged.body.b[0]
    assert (b.in_channels, b.out_channels, b.groups) == (8, 8, 4)
    with torch.no_grad():
        torch.testing.assert_close(merged(X), expected, atol=1e-5, rtol=1e-5)
