"""What every callback that changes the network's structure inside one ``fit`` has in common.

:class:`PruningCallback` holds the scaffolding: the epochs the callback acts at and how they move when a
trained baseline replaces the first stage of a pipeline (:meth:`~PruningCallback.shift_schedule`), its
checkpointed state under a key of its own (two pruning callbacks in one run keep separate states), the
check of its settings (:meth:`~PruningCallback.check_settings`, called before anything is trained) and
its entry in ``summary.json`` (:meth:`~PruningCallback.describe`). A method's callback adds only its
hooks and the attributes it keeps.

:func:`check_pruning` checks all pruning callbacks of a trainer against each other, the fit's length and
the actual network; the experiment scripts call it right after the command line is parsed.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import lightning as L
import torch

from callbacks.stages import sync_from_rank_zero
from lightning_modules.pruning.criteria import CRITERIA, NORMS
from lightning_modules.pruning.width import DEFAULT_KEY, prunable_groups


class PruningSettingsError(ValueError):
    """A pruning setting that cannot work; the message names the option, its value and how to fix it."""


def settings_error(owner: object, option: str, value: Any, problem: str, fix: str) -> PruningSettingsError:
    """``<Class>.<option> = <value>: <problem>; <fix>`` as one error."""
    return PruningSettingsError(f"{type(owner).__name__}.{option} = {value!r}: {problem}; {fix}")


def check_sparsity(owner: object, option: str, sparsity: float | Mapping[str, float]) -> None:
    """Every sparsity of ``sparsity`` (a float or a per-layer dict) lies in ``[0, 1)``."""
    values = sparsity.values() if isinstance(sparsity, Mapping) else [sparsity]
    for value in values:
        if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
            raise settings_error(owner, option, sparsity, "every sparsity must be in [0, 1) (1 would remove "
                                 "every channel of a layer)", "give the fraction of channels to remove, e.g. 0.5")


def check_choice(owner: object, option: str, value: Any, choices: Collection[Any]) -> None:
    if value not in choices:
        raise settings_error(owner, option, value, "unknown", f"choose one of {sorted(choices)}")


def check_at_least(owner: object, option: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise settings_error(owner, option, value, f"must be >= {minimum}", f"give a value >= {minimum}")


def check_names(owner: object, option: str, given: Iterable[str], names: Collection[str], kind: str) -> None:
    """Every name in ``given`` is one of ``names`` (the layers of the network the callback prunes)."""
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise settings_error(owner, option, unknown, f"names no {kind} of the network",
                             f"use the names of its {kind}s: {list(names)}")


class PruningCallback(L.Callback):
    """Base of the callbacks that change the network at scheduled epochs (width pruning, the depth cut).

    Subclasses set :attr:`method`, :attr:`epoch_attributes` and :attr:`state_attributes`, keep what they
    did in ``self.result`` (empty until they acted) and override :meth:`structure_epochs` when they change
    the network more than once. The constructor's arguments must be kept under their own names: they
    are the callback's settings (its state key and its description); a ``@dataclass(eq=False)``
    subclass declares them as fields and its state in ``__post_init__``.
    """

    #: Name of the method in summaries and tables.
    method: ClassVar[str] = ""
    #: Attributes holding the epochs of the schedule, earliest first (moved together by a shift).
    epoch_attributes: ClassVar[tuple[str, ...]] = ("epoch",)
    #: Attributes saved in checkpoints (restored by :meth:`load_state_dict`).
    state_attributes: ClassVar[tuple[str, ...]] = ("result",)
    #: What the callback did (filled when it acts; empty before).
    result: dict[str, Any]
    _state_key: str | None = None

    def __post_init__(self) -> None:
        self.result = {}

    # ----------------------------------------------------------------------------------- schedule
    @property
    def done(self) -> bool:
        return bool(self.result)

    @property
    def first_epoch(self) -> int:
        """The first epoch the callback acts at (a loss term or a structural change)."""
        return int(getattr(self, self.epoch_attributes[0]))

    def structure_epochs(self) -> list[int]:
        """The epochs at whose start the callback changes the network's structure."""
        return [int(getattr(self, self.epoch_attributes[-1]))]

    def stage_restarts(self) -> list[int]:
        """Epochs at whose start the callback may restart the LR schedule: its structural changes (the
        stage before the earliest of them gets a schedule of its own, see
        :func:`~lightning_modules.optimisation.first_stage_epochs`)."""
        return self.structure_epochs()

    @property
    def last_epoch(self) -> int:
        """The epoch of the last structural change."""
        return max(self.structure_epochs())

    def shift_schedule(self, shift: int) -> None:
        """Move every epoch of the schedule ``shift`` epochs earlier (not below 0), e.g. when a trained
        baseline replaces the baseline stage of a pipeline."""
        for name in self.epoch_attributes:
            setattr(self, name, max(int(getattr(self, name)) - shift, 0))

    def pruned_epochs(self) -> list[int]:
        """The epochs at which the network really was changed (from :attr:`result`)."""
        steps = self.result.get("steps", [self.result] if self.result else [])
        return [int(step["epoch"]) for step in steps]

    # ----------------------------------------------------------------------------------- settings
    def settings(self) -> dict[str, Any]:
        """The constructor's arguments as the callback holds them now."""
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        return {name: getattr(self, name) for name in names if hasattr(self, name)}

    def check_settings(self) -> None:
        """Raise :class:`PruningSettingsError` for settings that cannot work, whatever the network."""

    def check_network(self, net: torch.nn.Module, layer_names: Collection[str]) -> None:
        """Raise :class:`PruningSettingsError` for settings that do not fit ``net``, whose prunable layers
        are ``layer_names`` (per-layer sparsities, ignored layers, a cut block)."""

    def check_backbone(self, net: torch.nn.Module, image_size: int) -> None:
        """Raise :class:`PruningSettingsError` when the method cannot work on ``net``'s kind of network at all.
        Checked for every callback, also one that acts on a network that exists only later (after a depth
        cut, which keeps the kinds of layers of ``net``)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # also for a Trainer built without the experiment scripts: bad settings fail before the first batch
        if stage == "fit":
            self.check_settings()
            check_schedule(self, trainer.max_epochs)

    def schedule(self) -> str:
        """The callback's schedule in a few words, for the results tables (each method says its own)."""
        return "—"

    def describe(self) -> dict[str, Any]:
        """The callback in ``summary.json``: method, settings, when it changed the network, the outcome."""
        settings = self.settings()
        return {
            "method": self.method,
            "criterion": settings.get("criterion", getattr(self, "criterion", None)),
            "sparsity": getattr(self, "sparsity", None),
            "done": self.done,
            "prune_epoch": self.last_epoch,
            "pruned_at": self.pruned_epochs(),
            "flops_preserve_rate": self.result.get("flops_preserve_rate"),
            "settings": settings,
            "result": dict(self.result),
        }

    # ----------------------------------------------------------------------------- checkpointing
    @property
    def state_key(self) -> str:
        # One key per configured callback (Lightning refuses two stateful callbacks under one key). It is
        # fixed at its first use, when the Trainer is built, so a later schedule shift does not change it.
        if self._state_key is None:
            self._state_key = self._generate_state_key(**self.settings())
        return self._state_key

    def state_dict(self) -> dict[str, Any]:
        return {name: _detached(getattr(self, name)) for name in self.state_attributes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name in self.state_attributes:
            if name in state_dict:  # checkpoints of older versions may lack later attributes
                setattr(self, name, state_dict[name])

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Adopt a state saved under the class name alone (checkpoints written before the per-settings
        key); refuse a state this class saved under other settings instead of silently starting over."""
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        taken = {cb.state_key for cb in trainer.callbacks}
        name = type(self).__qualname__
        orphans = [k for k in states if isinstance(k, str) and k.split("{")[0] == name and k not in taken]
        if orphans == [name]:
            states[self.state_key] = states.pop(name)
        elif orphans:
            raise settings_error(self, "settings", self.settings(), f"the checkpoint holds the state of {orphans}, "
                                 "saved under other settings", "resume with the settings of the original run")


@dataclass(eq=False, kw_only=True)
class WidthPruningCallback(PruningCallback):
    """The settings every width method shares: ``criterion`` (one of :attr:`criteria`), ``round_to`` and
    ``ignore`` (keyword-only fields, see the methods' docstrings); each method adds its sparsity (a float
    or a per-layer dict, under :attr:`sparsity_option`) and, where it has one, ``max_pruning_ratio``."""

    criterion: str = "l2_norm"
    round_to: int = 1
    ignore: list[str] | None = None
    #: Criteria the method accepts.
    criteria: ClassVar[frozenset[str]] = frozenset(CRITERIA)
    #: The option holding the sparsity the method ends at.
    sparsity_option: ClassVar[str] = "sparsity"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.ignore = list(self.ignore or [])

    def check_settings(self) -> None:
        check_sparsity(self, self.sparsity_option, self.sparsity)
        check_choice(self, "criterion", self.criterion, self.criteria)
        check_at_least(self, "round_to", self.round_to, 1)
        for name in self.epoch_attributes:
            check_at_least(self, name, getattr(self, name), 0)
        for first, then in zip(self.epoch_attributes, self.epoch_attributes[1:], strict=False):
            if getattr(self, then) < getattr(self, first):
                raise settings_error(self, then, getattr(self, then), f"comes before {first} "
                                     f"({getattr(self, first)})", f"set {then} >= {first}")
        ratio = getattr(self, "max_pruning_ratio", 1.0)
        if not 0.0 < ratio <= 1.0:
            raise settings_error(self, "max_pruning_ratio", ratio, "must be in (0, 1]",
                                 "give the largest fraction of a layer's channels that may go, e.g. 0.8")

    def check_network(self, net: torch.nn.Module, layer_names: Collection[str]) -> None:
        if isinstance(self.sparsity, Mapping):
            check_names(self, self.sparsity_option, set(self.sparsity) - {DEFAULT_KEY}, layer_names, "prunable layer")
        convs = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
        check_names(self, "ignore", self.ignore, convs, "convolution")
        if self.criterion == "bn_scale" and not any(
                isinstance(m, NORMS) and getattr(m, "weight", None) is not None for m in net.modules()):
            raise settings_error(self, "criterion", self.criterion, "reads the per-channel scale of normalisation "
                                 "layers (BatchNorm, LayerNorm, GroupNorm) and the network has none",
                                 "prune it with a weight criterion (l1_norm, l2_norm, fpgm) instead")


def _detached(value: Any) -> Any:
    """``value`` with every tensor detached, cloned and on the CPU (dicts and lists copied)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, Mapping):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_detached(v) for v in value)
    return value


# ------------------------------------------------------------------------------------ the trainer
def notify_before_prune(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Call ``on_before_prune(trainer, pl_module)`` on each of ``trainer.callbacks`` that has it, in order,
    right before a callback changes ``pl_module.net`` (e.g. :class:`~callbacks.distillation.Distillation`
    keeps a copy of the unpruned network as its teacher). In a multi-process fit every rank first takes
    rank 0's parameters and buffers, so that the pruning decision that follows (and the teacher) are the
    same on every rank."""
    sync_from_rank_zero(trainer, pl_module)
    for callback in trainer.callbacks:
        hook = getattr(callback, "on_before_prune", None)
        if callable(hook):
            hook(trainer, pl_module)


def pruning_callbacks(trainer: L.Trainer) -> list[PruningCallback]:
    """The trainer's pruning callbacks (width methods and the depth cut), in their order."""
    return [cb for cb in trainer.callbacks if isinstance(cb, PruningCallback)]


def width_pruners(trainer: L.Trainer) -> list[WidthPruningCallback]:
    """The trainer's width-pruning callbacks, in their order."""
    return [cb for cb in trainer.callbacks if isinstance(cb, WidthPruningCallback)]


def check_schedule(callback: PruningCallback, max_epochs: int | None) -> None:
    """The fit must outlast the callback's last structural change (at least one epoch to fine-tune)."""
    last = callback.last_epoch
    if max_epochs is None or max_epochs < 0 or max_epochs <= last:
        raise PruningSettingsError(
            f"{type(callback).__name__} changes the network last at epoch {last}, but --trainer.max_epochs is "
            f"{max_epochs}; raise --trainer.max_epochs above {last} (or prune earlier) to leave epochs for "
            "fine-tuning")


def check_collisions(callbacks: Iterable[PruningCallback]) -> None:
    """No two callbacks change the network at the start of the same epoch."""
    seen: dict[int, PruningCallback] = {}
    for callback in callbacks:
        for epoch in callback.structure_epochs():
            other = seen.setdefault(epoch, callback)
            if other is not callback:
                raise PruningSettingsError(
                    f"{type(other).__name__} and {type(callback).__name__} both change the network at the start "
                    f"of epoch {epoch}; move one of them to another epoch")


def prunable_layer_names(net: torch.nn.Module, image_size: int) -> list[str]:
    """Names of the convolutions whose output channels width pruning can remove (the groups' roots)."""
    in_chans = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    example = torch.zeros(1, in_chans, image_size, image_size, device=next(net.parameters()).device)
    return [g.name for g in prunable_groups(net, example)]


def check_pruning(trainer: L.Trainer, net: torch.nn.Module, image_size: int) -> None:
    """Check every pruning callback of ``trainer`` before training: its own settings, that the fit lasts
    past its last change, that no two change the network at one epoch, and its layer names and cut
    against ``net`` (traced at ``image_size``) when nothing changes the network before it acts (a net
    that exists only later, e.g. after a cut, is checked when the callback acts), and whether the method
    works on ``net``'s kind of network at all (for every callback). Raises
    :class:`PruningSettingsError`."""
    callbacks = pruning_callbacks(trainer)
    for callback in callbacks:
        callback.check_settings()
        check_schedule(callback, trainer.max_epochs)
    check_collisions(callbacks)
    names: list[str] | None = None
    for callback in callbacks:
        callback.check_backbone(net, image_size)
        before = [e for other in callbacks if other is not callback for e in other.structure_epochs()]
        if all(e > callback.first_epoch for e in before):
            names = prunable_layer_names(net, image_size) if names is None else names
            callback.check_network(net, names)
