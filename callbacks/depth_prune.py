"""Cut the network at the chosen block, keep the auxiliary head there, and fine-tune the result."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from callbacks.auxiliary_sweep import AuxiliarySweep
from callbacks.pruning_base import PruningCallback, check_choice, notify_before_prune, settings_error
from callbacks.stages import (
    broadcast_from_rank_zero,
    data_image_size,
    find_callback,
    log_scalars,
    reset_best_checkpoint,
    restart_optimization,
    run_dir,
)
from lightning_modules.backbones import adapter_of_net
from lightning_modules.deploy.profiling import model_cost
from lightning_modules.models.aux_heads import head_channels_of
from lightning_modules.pruning.depth_cut import Baseline, CutPoint, choose_cut, removes_nothing, row_for_cut
from lightning_modules.reporting.sweep import format_sweep_table, log_sweep_to_wandb, write_sweep_report


def sweep_rows(sweep: AuxiliarySweep) -> tuple[list[CutPoint], Baseline]:
    """The sweep's measured accuracies joined with each cut's params/MACs."""
    rows = [CutPoint(cut=k, params=c["params"], macs=c["macs"], acc=sweep.accuracies[k])
            for k, c in sorted(sweep.costs.items()) if k in sweep.accuracies]
    base = sweep.baseline
    return rows, Baseline(params=base["params"], macs=base["macs"], acc=base.get("acc", float("nan")))


class DepthPrune(PruningCallback):
    """At ``epoch``: choose the cut, rebuild the network as the layers up to cut point k + head k
    (through the backbone's adapter), restart the optimiser and LR schedule, and fine-tune until the end
    of the fit.

    Args:
        epoch: the epoch at whose start the network is cut.
        block: cut after this block (0 = after the stem); ``None`` chooses automatically with ``rule``.
        rule: ``tolerance`` (smallest model within ``tolerance`` of the baseline accuracy) or ``knee``
            (knee of the accuracy–params Pareto front).
        tolerance: accuracy drop allowed by the ``tolerance`` rule (0.01 = one point).
        head: head widths when there is no sweep (with a sweep, its heads' widths are used).
        init: ``original`` (kept blocks + the head trained in the sweep), ``original_fresh_head`` or
            ``random`` (same architecture, re-initialised).
        finetune: ``all`` parameters (the replication) or ``head`` only (the paper's frozen tail).
    """

    method = "depth"

    def __init__(
        self,
        epoch: int = 0,
        block: int | None = None,
        rule: Literal["tolerance", "knee"] = "tolerance",
        tolerance: float = 0.01,
        head: str | list[int] = "replication",
        init: Literal["original", "original_fresh_head", "random"] = "original",
        finetune: Literal["all", "head"] = "all",
    ) -> None:
        self.epoch = epoch
        self.block = block
        self.rule = rule
        self.tolerance = tolerance
        self.head_channels = head_channels_of(head)
        self.init = init
        self.finetune = finetune
        self.result: dict[str, Any] = {}

    def check_settings(self) -> None:
        check_choice(self, "rule", self.rule, ("tolerance", "knee"))
        check_choice(self, "init", self.init, ("original", "original_fresh_head", "random"))
        check_choice(self, "finetune", self.finetune, ("all", "head"))
        if self.epoch < 0:
            raise settings_error(self, "epoch", self.epoch, "is negative", "give an epoch >= 0")
        if not 0.0 <= self.tolerance <= 1.0:  # 1.0: any cut qualifies, so the smallest one is chosen
            raise settings_error(self, "tolerance", self.tolerance, "is not an accuracy drop in [0, 1]",
                                 "give a fraction, e.g. 0.01 for one point")

    def check_network(self, net: nn.Module, layer_names: Collection[str]) -> None:
        last = len(adapter_of_net(net).cut_points(net)) - 1  # cut point 0: the earliest (e.g. after the stem)
        if self.block is not None and not 0 <= self.block <= last:
            raise settings_error(self, "block", self.block,
                                 f"is no cut point of the network (its cut points are 0 = the earliest, e.g. after "
                                 f"the stem, to {last} = the last)", f"give a block in [0, {last}]")
        if self.block is not None and last > 0 and self.block == last:
            raise settings_error(self, "block", self.block,
                                 "is the network's last cut point: a cut there keeps every block and only swaps "
                                 "the classifier for an auxiliary head, so nothing would be pruned",
                                 f"give a block in [0, {last - 1}]")

    def _check_it_prunes(self, net: nn.Module, rows: Sequence[CutPoint], baseline: Baseline, cut: int,
                         reason: str) -> None:
        """An automatic rule that lands on a cut removing nothing (the last cut point, or a net no smaller
        than the baseline) ends the run with one error instead of "pruning" to the same network."""
        if self.block is not None:  # given (by the user: its last cut point is refused before training; or by
            return                  # a budget choice, whose width stage may still prune a net kept whole)
        last = len(adapter_of_net(net).cut_points(net)) - 1
        if (problem := removes_nothing(row_for_cut(rows, cut), baseline, last)) is None:
            return
        option, value = ("tolerance", self.tolerance) if self.rule == "tolerance" else ("rule", self.rule)
        raise settings_error(self, option, value, f"the {self.rule} rule chose cut {cut}, {problem}, so nothing "
                             f"would be pruned ({reason})", "the sweep table is written (depth_sweep.csv) and the "
                             "baseline kept (checkpoints/baseline.ckpt): rerun from it with --baseline_ckpt and a "
                             "larger --prune.tolerance, --prune.rule knee or an explicit --prune.block")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.done or trainer.current_epoch < self.epoch:
            return
        sweep = find_callback(trainer, AuxiliarySweep)
        image_size = data_image_size(trainer)
        before = model_cost(pl_module.net, image_size)
        self.result = {"init": self.init, "finetune": self.finetune, "before": before,
                       "arch_before": dict(pl_module.arch)}
        head = None
        if sweep is not None and sweep.accuracies:
            rows, baseline = sweep_rows(sweep)
            cut, reason = broadcast_from_rank_zero(trainer, choose_cut(rows, baseline, self.block, self.rule,
                                                                       self.tolerance))
            self.head_channels = tuple(sweep.head_channels)
            rank_zero_info(format_sweep_table(rows, baseline, cut))
            if trainer.is_global_zero:
                paths = write_sweep_report(rows, baseline, cut, run_dir(trainer))
                log_sweep_to_wandb(getattr(trainer.logger, "experiment", None), rows, baseline, cut,
                                   paths["png"])
                self.result["report"] = {k: str(v) for k, v in paths.items()}
            self.result["sweep"] = [vars(r) for r in rows]
            self.result["baseline"] = vars(baseline)
            self._check_it_prunes(pl_module.net, rows, baseline, cut, reason)
            if pl_module.aux_heads is not None:
                head = pl_module.aux_heads.heads[str(cut)]
        elif self.block is None:
            raise RuntimeError("DepthPrune needs an explicit block, or an AuxiliarySweep that ran before it")
        else:
            cut, reason = self.block, f"block {self.block} given explicitly"
        rank_zero_info(f"Depth pruning: cut after block {cut} — {reason}")
        notify_before_prune(trainer, pl_module)
        new_net, arch = pl_module.adapter.cut(pl_module.net, pl_module.arch, cut, self.head_channels, head,
                                              self.init)
        pl_module.detach_aux_heads()
        pl_module.rebuild_net(new_net, **arch)
        trunk = [f"net.{name}" for name in pl_module.adapter.trunk_names(pl_module.net)]
        pl_module.freeze_modules(trunk if self.finetune == "head" else [])
        restart_optimization(trainer, pl_module, int(trainer.max_epochs) - trainer.current_epoch)
        reset_best_checkpoint(trainer)
        after = model_cost(pl_module.net, image_size)
        self.result.update(epoch=trainer.current_epoch, cut=cut, reason=reason, after=after, arch=arch)
        log_scalars(trainer, {"prune/cut": cut, "prune/params": after["params"], "prune/macs": after["macs"],
                              "prune/params_ratio": after["params"] / before["params"],
                              "prune/macs_ratio": after["macs"] / before["macs"]})
