"""Width pruning: criteria, channel groups, pruning plans and structural slicing on small networks."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from lightning_modules.backbones.mobilenet_v1 import (
    mobilenet_v1_arch_after_pruning,
    rebuild_mobilenet_v1,
)
from lightning_modules.deploy.profiling import count_macs, count_params
from lightning_modules.models.mobilenet_v1 import MobileNetV1
from lightning_modules.pruning.criteria import (
    CRITERIA,
    FPGM,
    BNScale,
    HRank,
    L1Norm,
    L2Norm,
    RandomCriterion,
    make_criterion,
)
from lightning_modules.pruning.width import (
    ChannelGroup,
    channel_scores,
    flops_preserve_rate,
    keep_count,
    output_layer,
    plan_pruning,
    prunable_groups,
    prune_model,
)

torch.set_num_threads(1)

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def small_mobilenet(width: float = 0.25, **kw) -> MobileNetV1:
    return MobileNetV1(num_classes=10, width_mult=width, stem_stride=1, **kw)


MODELS = {
    "mobilenet_v1": lambda: small_mobilenet(head_channels=(16,)),
    "resnet18": lambda: timm.create_model("resnet18", pretrained=False, num_classes=10),
}


class Tiny(nn.Module):
    """conv1 → BN → ReLU → conv2 → BN → ReLU → GAP → fc: hand-made filters go into ``conv1``."""

    def __init__(self, in_chans: int = 2, width: int = 5) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_chans, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


def mark_channels(group: ChannelGroup) -> nn.BatchNorm2d:
    """Write each channel's root index into the bias of a BatchNorm of the group; returns that BatchNorm,
    whose bias after slicing lists the kept channels."""
    bn, idxs, root_idxs = next(item for item in group.layers if isinstance(item[0], nn.BatchNorm2d))
    bn.bias.data[idxs] = torch.tensor(root_idxs, dtype=torch.float32)
    return bn


def kept_channels(bn: nn.BatchNorm2d) -> list[int]:
    return bn.bias.detach().round().long().tolist()


def randomise_norms(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.running_mean.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var.data = torch.rand(m.num_features, generator=g) + 0.5


# ---------------------------------------------------------------------------------------- every criterion
@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_slices_and_keeps_the_highest_scored_channels(name: str, arch: str) -> None:
    torch.manual_seed(0)
    model = MODELS[arch]()
    randomise_norms(model)
    criterion = make_criterion(name)
    if criterion.needs_data:
        criterion.collect(model, [X])
    groups = prunable_groups(model, X[:1])
    reference = channel_scores(groups, make_criterion(name) if name == "random" else criterion)
    sizes = {g.name: g.num_channels for g in groups}
    markers = {g.name: mark_channels(g) for g in groups}
    macs, params = count_macs(model, 32), count_params(model)

    assert prune_model(model, criterion, 0.5, X[:1]) is model
    assert count_params(model) < params and count_macs(model, 32) < macs
    assert model.eval()(X).shape == (4, 10) and output_layer(model).out_features == 10
    for group_name, n in sizes.items():
        kept = kept_channels(markers[group_name])
        removed = sorted(set(range(n)) - set(kept))
        assert len(kept) == keep_count(n, 0.5) == n // 2
        scores = reference[group_name]
        assert scores[kept].min() >= scores[removed].max(), group_name


def test_groups_follow_depthwise_and_exclude_the_classifier() -> None:
    net = small_mobilenet(head_channels=(16,))
    groups = prunable_groups(net, X[:1])
    assert [g.name for g in groups] == ["stem.0", *(f"blocks.{i}.pw.0" for i in range(13)), "head.blocks.0.pw.0"]
    stem = groups[0].layers
    assert [m for m, _, _ in stem] == [net.stem[0], net.stem[1], net.blocks[0].dw[0], net.blocks[0].dw[1]]
    assert all(m is not net.head.fc for g in groups for m, _, _ in g.layers)


@pytest.mark.parametrize("criterion", [L1Norm(), L2Norm()])
def test_norm_criteria_keep_the_planted_largest_filters(criterion) -> None:
    net = small_mobilenet()
    groups = prunable_groups(net, X[:1])
    g = torch.Generator().manual_seed(1)
    planted = {}
    for group in groups:
        perm = torch.randperm(group.num_channels, generator=g).float()
        planted[group.name] = perm
        for layer, idxs, root_idxs in group.layers:
            if isinstance(layer, nn.Conv2d):
                w = layer.weight.data
                sign = torch.randn(w[idxs].shape, generator=g).sign()
                w[idxs] = (perm[root_idxs] + 1).view(-1, 1, 1, 1) * sign
    markers = {group.name: mark_channels(group) for group in groups}
    prune_model(net, criterion, 0.5, X[:1])
    for name, perm in planted.items():
        n = len(perm)
        assert set(kept_channels(markers[name])) == set(torch.nonzero(perm >= n - n // 2).flatten().tolist())


def test_l1_and_l2_disagree_where_they_should() -> None:
    a, b = [3.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]  # l1: 3 < 4, l2: 3 > 2
    removed = {}
    for criterion in (L1Norm(), L2Norm()):
        net = Tiny(in_chans=4, width=2)
        net.conv1.weight.data = torch.tensor([a, b]).view(2, 4, 1, 1)
        prune_model(net, criterion, {"conv1": 0.5}, torch.randn(1, 4, 8, 8))
        removed[type(criterion).__name__] = a if net.conv1.weight.flatten().tolist() == b else b
    assert removed == {"L1Norm": a, "L2Norm": b}


def test_fpgm_prunes_the_filter_nearest_the_geometric_median() -> None:
    centre = torch.tensor([5.0, 5.0])
    offsets = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0], [0.1, 0.0]])
    filters = centre + offsets  # the last one sits next to the median but has neither the least nor largest norm
    for criterion, dropped in ((FPGM(), 4), (L2Norm(), 1)):
        net = Tiny(in_chans=2, width=5)
        net.conv1.weight.data = filters.view(5, 2, 1, 1).clone()
        prune_model(net, criterion, {"conv1": 0.2}, torch.randn(1, 2, 8, 8))
        kept = net.conv1.weight.view(4, 2)
        assert torch.equal(kept, filters[[i for i in range(5) if i != dropped]]), type(criterion).__name__


# ------------------------------------------------------------------------------------------------- hrank
def planted_low_rank() -> tuple[Tiny, torch.Tensor, list[int]]:
    """Channels 1, 4, 6 of ``conv1`` see only input channel 0, a positive rank-1 image: rank-1 maps with
    the largest filters; the other channels mix in full-rank noise."""
    g = torch.Generator().manual_seed(0)
    net = Tiny(in_chans=3, width=8)
    weight = torch.randn(8, 3, generator=g) * 0.3
    low = [1, 4, 6]
    weight[low] = torch.tensor([5.0, 0.0, 0.0])
    net.conv1.weight.data = weight.view(8, 3, 1, 1)
    x = torch.randn(6, 3, 16, 16, generator=g)
    u, v = torch.rand(6, 16, 1, generator=g) + 0.1, torch.rand(6, 1, 16, generator=g) + 0.1
    x[:, 0] = u @ v
    return net, x, low


def test_hrank_prunes_the_planted_low_rank_channels() -> None:
    net, x, low = planted_low_rank()
    criterion = HRank()
    criterion.collect(net, [(x[:3], None), (x[3:], None)])
    ranks = criterion.score(net.bn1)
    assert ranks[low].tolist() == [1.0, 1.0, 1.0] and ranks[[0, 2, 3, 5, 7]].min() > 1
    prune_model(net, criterion, {"conv1": 3 / 8}, x[:1])
    assert net.conv1.out_channels == 5
    assert net.conv1.weight[:, 1:].abs().sum((1, 2, 3)).min() > 0  # every rank-1 channel is gone
    l1_kept = Tiny(in_chans=3, width=8)
    l1_kept.conv1.weight.data = planted_low_rank()[0].conv1.weight.data
    assert set(L1Norm().score(l1_kept.conv1).topk(3).indices.tolist()) == set(low)  # l1 would keep them


def test_hrank_refuses_stale_or_missing_statistics() -> None:
    net, x, _ = planted_low_rank()
    criterion = HRank()
    with pytest.raises(RuntimeError, match="collect"):
        criterion.score(net.bn1)
    criterion.collect(net, [x])
    prune_model(net, criterion, {"conv1": 0.5}, x[:1])
    with pytest.raises(RuntimeError, match="stale"):
        criterion.score(net.bn1)


def test_hrank_reduces_across_ranks(tmp_path) -> None:
    net, x, _ = planted_low_rank()
    local = HRank()
    local.collect(net, [x])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        reduced = HRank()
        reduced.collect(net, [x])
    finally:
        dist.destroy_process_group()
    assert torch.equal(local.score(net.bn1), reduced.score(net.bn1))


def test_random_criterion_is_seeded() -> None:
    def pruned(seed: int) -> MobileNetV1:
        torch.manual_seed(0)
        return prune_model(small_mobilenet(), RandomCriterion(seed), 0.5, X[:1])

    a, b, c = pruned(0), pruned(0), pruned(1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.stem[0].weight, c.stem[0].weight)


def test_make_criterion_registry() -> None:
    assert isinstance(make_criterion("random", seed=3), RandomCriterion)
    assert set(CRITERIA) == {"random", "l1_norm", "l2_norm", "fpgm", "hrank", "bn_scale"}
    with pytest.raises(ValueError, match="unknown criterion"):
        make_criterion("taylor")


# ------------------------------------------------------------------------------------------ plans, costs
@pytest.mark.parametrize(("sparsity", "rate", "tol"), [(0.5, 0.25, 0.03), (0.75, 0.06, 0.02)])
def test_flops_preserve_rate_of_mobilenet_v1(sparsity: float, rate: float, tol: float) -> None:
    net = MobileNetV1(num_classes=1000).eval()
    before = count_macs(net, 224)
    prune_model(net, L1Norm(), sparsity, X[:1])
    assert flops_preserve_rate(before, count_macs(net, 224)) == pytest.approx(rate, abs=tol)


def test_round_to_makes_kept_counts_multiples() -> None:
    channels = {}
    for round_to in (1, 8):
        torch.manual_seed(0)
        net = prune_model(small_mobilenet(0.5, head_channels=(24,)), L1Norm(), 0.3, X[:1], round_to=round_to)
        arch = mobilenet_v1_arch_after_pruning(net)
        channels[round_to] = arch["channels"] + arch["head_channels"]
    assert all(c % 8 == 0 for c in channels[8])
    assert any(c % 8 for c in channels[1])  # without rounding 0.3 leaves odd widths


def test_keep_count_rounding_and_floor() -> None:
    assert keep_count(32, 0.5) == 16 and keep_count(32, 0.75) == 8 and keep_count(10, 0.0) == 10
    assert keep_count(32, 0.3, round_to=8) == 24 and keep_count(12, 0.99, round_to=8) == 8
    assert keep_count(16, 1.0, min_channels=2) == 2
    with pytest.raises(ValueError):
        keep_count(16, 1.5)


def test_per_layer_sparsity_and_ignore() -> None:
    net = small_mobilenet()
    sparsity = {"default": 0.5, "stem.0": 0.75, "blocks.0.pw.0": 0.0}
    prune_model(net, L1Norm(), sparsity, X[:1], ignore=[net.blocks[1].pw[0]])
    expected = [2, 16, 32, *(c // 2 for c in small_mobilenet().channels[3:])]
    assert mobilenet_v1_arch_after_pruning(net)["channels"] == expected
    with pytest.raises(ValueError, match="no prunable group"):
        prune_model(small_mobilenet(), L1Norm(), {"blocks.0.dw.0": 0.5}, X[:1])


def test_global_ranking_takes_more_from_a_layer_with_smaller_scores() -> None:
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(16, generator=g) + 1.0, "b": (torch.rand(16, generator=g) + 1.0) * 0.1}
    local = plan_pruning(scores, 0.5)
    assert len(local["a"]) == len(local["b"]) == 8
    plan = plan_pruning(scores, 0.5, global_ranking=True)
    assert len(plan["a"]) + len(plan["b"]) == 16 and len(plan["b"]) == 15  # b keeps min_channels
    assert plan_pruning(scores, 0.5, global_ranking=True, min_channels=4, round_to=1)["b"].__len__() == 12
    capped = plan_pruning(scores, 0.5, global_ranking=True, max_pruning_ratio=0.75)
    assert len(capped["b"]) == 12 and len(capped["a"]) == 4  # b keeps a quarter; a gives up the rest
    with pytest.raises(ValueError, match="max_pruning_ratio"):
        plan_pruning(scores, 0.5, global_ranking=True, max_pruning_ratio=0.0)


def test_global_bn_slimming_prunes_the_layer_with_small_gammas() -> None:
    kept = {}
    for global_ranking in (False, True):
        net = small_mobilenet()
        randomise_norms(net)
        groups = prunable_groups(net, X[:1])
        shrunk = next(g for g in groups if g.name == "blocks.3.pw.0")
        for layer, _, _ in shrunk.layers:
            if isinstance(layer, nn.BatchNorm2d):
                layer.weight.data *= 0.01
        prune_model(net, BNScale(), 0.5, X[:1], global_ranking=global_ranking)
        kept[global_ranking] = mobilenet_v1_arch_after_pruning(net)["channels"][4]
    assert kept[False] == 32 and kept[True] < 32


def test_global_scores_are_normalised_except_bn_scale() -> None:
    net = small_mobilenet()
    randomise_norms(net)
    groups = prunable_groups(net, X[:1])
    l1 = channel_scores(groups, L1Norm(), normalize=True)
    assert all(s.mean() == pytest.approx(1.0, rel=1e-5) for s in l1.values())
    raw = channel_scores(groups, BNScale(), normalize=True)
    assert raw["stem.0"].mean() > 1.0  # sum of two |γ| in [0.5, 1.5)


# ------------------------------------------------------------------------------------------- round trip
def test_sliced_mobilenet_is_rebuilt_from_constructor_arguments() -> None:
    torch.manual_seed(0)
    net = small_mobilenet(head_channels=(16, 8), dropout=0.2)
    randomise_norms(net)
    prune_model(net, L2Norm(), 0.5, X[:1])
    arch = mobilenet_v1_arch_after_pruning(net)
    assert arch["channels"] == [c // 2 for c in small_mobilenet().channels]
    assert arch["head_channels"] == [8, 4] and arch["num_classes"] == 10 and arch["dropout"] == 0.2
    fresh = MobileNetV1(**arch)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    fresh.load_state_dict(net.state_dict())
    torch.testing.assert_close(fresh.eval()(X), net.eval()(X), atol=1e-5, rtol=0)
    rebuilt, same_arch = rebuild_mobilenet_v1(net)
    assert same_arch == arch and rebuilt.channels == arch["channels"]
    torch.testing.assert_close(rebuilt.eval()(X), net(X), atol=1e-5, rtol=0)


def test_tracing_leaves_batchnorm_statistics_alone() -> None:
    net = small_mobilenet().train()
    before = copy.deepcopy(net.state_dict())
    prune_model(net, L1Norm(), {"default": 0.0}, X[:1] * 10)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_pruned_timm_net_round_trips_through_torch_pruning_structure_state(tmp_path) -> None:
    """Networks without constructor arguments for their widths (timm's) save and load their pruned
    structure with torch-pruning's own ``state_dict``/``load_state_dict``."""
    torch.manual_seed(0)
    net = MODELS["resnet18"]()
    randomise_norms(net)
    prune_model(net, make_criterion("l1_norm"), 0.5, X[:1], round_to=8)
    path = tmp_path / "pruned.pth"
    torch.save(tp.state_dict(net), path)

    fresh = MODELS["resnet18"]()
    assert count_params(fresh) > count_params(net)
    tp.load_state_dict(fresh, torch.load(path, weights_only=False))
    assert count_params(fresh) == count_params(net)
    torch.testing.assert_close(fresh.eval()(X), net.eval()(X))
