"""The interface every backbone family implements, and shape checks shared by all of them.

A backbone adapter tells the rest of the code base what it needs to know about a family of networks:

* the ordered **cut points** (index ``k`` = "the network up to here"), with channels and stride at each;
* the **features** at the cut points in one forward pass (what the auxiliary heads of a depth sweep see);
* the **cut** at ``k``: the truncated backbone followed by a classifier head;
* a **description** of a network (JSON-able hyper-parameters) from which :meth:`BackboneAdapter.build`
  rebuilds it, cut and/or width-pruned, from a checkpoint alone.

Adding a native backbone family is one file: its adapter, decorated with
:func:`~lightning_modules.backbones.registry.register_backbone`, imported once (``backbones/__init__.py``).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_modules.models.layers import ClassifierHead


@dataclass(frozen=True)
class CutPointInfo:
    """One place the network can be cut: its index, the module whose output it is, channels and stride."""

    index: int
    module: str
    channels: int
    stride: int


class ArchitectureMismatch(ValueError):
    """Weights (or a network) whose layers do not match the network they are meant for."""


def first_shape_mismatch(
    expected: Mapping[str, torch.Size | Sequence[int]], actual: Mapping[str, torch.Size | Sequence[int]]
) -> str | None:
    """A sentence naming the first tensor whose presence or shape differs between two ``name → shape`` maps
    (in ``expected``'s order, then ``actual``'s extra names), or ``None`` when they agree."""
    for name, shape in expected.items():
        if name not in actual:
            return f"layer {name!r} {tuple(shape)} is missing from the network"
        if tuple(actual[name]) != tuple(shape):
            return f"layer {name!r} has shape {tuple(shape)} in the weights but {tuple(actual[name])} in the network"
    extra = next((name for name in actual if name not in expected), None)
    if extra is not None:
        return f"layer {extra!r} {tuple(actual[extra])} of the network has no weights"
    return None


def shapes_of(state: Mapping[str, Any]) -> dict[str, torch.Size]:
    """``name → shape`` of every tensor in a state dict."""
    return {k: v.shape for k, v in state.items() if isinstance(v, torch.Tensor)}


def check_same_architecture(
    weights: Mapping[str, Any], network: Mapping[str, Any], what: str = "the weights"
) -> None:
    """Raise :class:`ArchitectureMismatch` naming the first mismatching layer and both shapes."""
    problem = first_shape_mismatch(shapes_of(weights), shapes_of(network))
    if problem is not None:
        raise ArchitectureMismatch(f"{what} do not match the network: {problem}")


def trained_like_batchnorm(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine terms, as a trained network has (a fresh one's zero-initialised
    residual BatchNorms would give all-zero tensors, which export and quantisation treat specially); the
    network in eval mode. For measuring networks nobody trained: exports, memory plans, instruction counts."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
    return net.eval()


@contextlib.contextmanager
def untouched_rng() -> Iterator[None]:
    """Build throw-away networks without moving the global random stream (exact resume, same seeds)."""
    with torch.random.fork_rng(devices=[]):
        yield


class BackboneAdapter(ABC):
    """What the LightningModule and the pruning callbacks need from one backbone family."""

    #: The ``--model.backbone`` value this adapter stands for (set by ``register_backbone``).
    name: str = ""
    #: Hyper-parameters that describe a network of this family (``ImageClassifier`` arguments).
    arch_keys: tuple[str, ...] = ()
    #: The class of the networks a native family builds (how :func:`adapter_of_net` recognises them).
    network_class: type[nn.Module] | None = None
    #: ``ImageClassifier`` arguments only this family takes, with their defaults: another family keeps them.
    own_arguments: Mapping[str, Any] = {}
    #: Appended to the message naming an argument this family does not take.
    argument_hint: str = ""

    @classmethod
    def for_arch(cls, arch: Mapping[str, Any]) -> BackboneAdapter:
        """The adapter for a network description (a native family needs nothing from it)."""
        return cls()

    @classmethod
    def check_arguments(cls, hparams: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming an argument that does not fit this family (before anything is built);
        none by default."""
        return None

    @classmethod
    def uncut_arch(cls, arch: Mapping[str, Any]) -> dict[str, Any]:
        """The description of the full network a cut and/or width-pruned ``arch`` of this family was pruned
        from (same classes, input channels and family arguments), e.g. to price the unpruned baseline of a
        depth run; a family that cannot say raises ``ValueError``."""
        raise ValueError(f"backbone {cls.name or cls.__name__!r} does not describe its uncut network")

    @abstractmethod
    def build(self, arch: Mapping[str, Any]) -> nn.Module:
        """A freshly initialised network described by ``arch`` (as :meth:`describe` returns it)."""

    @abstractmethod
    def describe(self, net: nn.Module) -> dict[str, Any]:
        """JSON-able hyper-parameters from which :meth:`build` makes a network with ``net``'s shapes."""

    @abstractmethod
    def cut_points(self, net: nn.Module, in_chans: int = 3) -> list[CutPointInfo]:
        """The ordered cut points of ``net``."""

    @abstractmethod
    def features(
        self, net: nn.Module, x: torch.Tensor, cut_points: Sequence[int], logits: bool = True
    ) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        """The network's logits and the features at ``cut_points``, from one forward pass; with
        ``logits=False`` the pass stops at the deepest cut point and the logits are ``None``."""

    @abstractmethod
    def cut(
        self,
        net: nn.Module,
        arch: Mapping[str, Any],
        k: int,
        head_channels: Sequence[int],
        head: ClassifierHead | None = None,
        init: str = "original",
    ) -> tuple[nn.Module, dict[str, Any]]:
        """``net`` cut after cut point ``k`` with a classifier head there, and its description.

        ``init``: ``original`` keeps the trained layers and the trained auxiliary ``head``;
        ``original_fresh_head`` keeps the layers and initialises a new head; ``random`` initialises all.
        """

    @abstractmethod
    def cut_costs(
        self, net: nn.Module, arch: Mapping[str, Any], cut_points: Sequence[int], head_channels: Sequence[int],
        image_size: int,
    ) -> dict[int, dict[str, int]]:
        """Params and MACs of every cut "network up to k + head k"."""

    @abstractmethod
    def after_width_prune(self, net: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        """The network to install after its channels were sliced in place, and its description."""

    def with_compactors(
        self, net: nn.Module, example_input: torch.Tensor, ignore: Sequence[nn.Module] = ()
    ) -> tuple[nn.Module, dict[str, Any]]:
        """``net`` with ResRep's identity compactors (the same function) and its description, which
        rebuilds them; ``ignore``: modules whose output channels are kept (their groups may go without)."""
        raise ValueError(f"ResRep's compactors are not implemented for backbone {self.name!r}")

    def merge_compactors(self, net: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        """The network without compactors computing what ``net`` computes in eval mode, and its description."""
        raise ValueError(f"ResRep's compactors are not implemented for backbone {self.name!r}")

    def trunk_names(self, net: nn.Module) -> list[str]:
        """Children of ``net`` before its classifier head (frozen when only the head is fine-tuned)."""
        return [name for name, _ in net.named_children() if name != "head"]


def check_cut_init(init: str, head: nn.Module | None) -> None:
    if init not in ("original", "original_fresh_head", "random"):
        raise ValueError(f"init must be original, original_fresh_head or random, got {init!r}")
    if init == "original" and head is None:
        raise ValueError("init='original' needs the trained auxiliary head of the cut point")


def device_of(net: nn.Module) -> torch.device:
    return next(net.parameters()).device
