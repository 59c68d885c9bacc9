"""Does the one-run sweep rank cut points as the paper's protocol does?

    uv run experiments/sweep_check.py --baseline_ckpt logs/tinyml-pruning/p32s0/checkpoints/baseline.ckpt \\
        --sweep docs/runs/p32s0/depth_sweep.json --epochs 4 --out docs/runs/sweep_check_p32s0.json

de Leon & Atienza (arXiv:2204.10546) train one auxiliary network per cut point, each on its own, on the
frozen base (their code: Adam, 20 epochs at 1e-3, 10 at 5e-4, 20 at 2.5e-4). This project's sweep trains
every cut point's head in one pass (``AuxiliarySweep``). From one trained baseline, this command trains

* **per point**: one head per cut point, each in its own fit (Adam, ``--lr``, ``--epochs`` epochs on a
  cosine schedule), the validation accuracy recorded after every epoch (so a reader sees whether each
  head has converged: ``last_epoch_change``);
* **one run**: all heads in one fit, with the same optimiser and epochs;

and puts beside them the depth run's own sweep (``--sweep``: its ``depth_sweep.json``, same baseline).
For each column: the Spearman rank correlation with the per-point column (torchmetrics) and the cut the
tolerance and knee rules choose (:func:`~lightning_modules.pruning.depth_cut.choose_cut`).

On a frozen base the heads share no parameter and the optimisers update each parameter from its own
gradient, so a head trained in one fit with the others ends exactly where a fit of that head alone ends
(same initial weights and batches; ``tests/test_sweep_check.py``). The per-point and one-run columns thus
differ only by the runs' randomness, and a one-run sweep trained until doubling its epochs no longer moves
any cut point (``--default_sweep --sweep_epochs N`` for growing N) is the per-point protocol run to
convergence, at the cost of one run: RESULTS judges the default sweep against it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics.functional import spearman_corrcoef

from callbacks.auxiliary_sweep import AuxiliarySweep
from experiments.run.arguments import (
    OneLineArgumentParser,
    non_negative_int,
    positive_float,
    positive_int,
    unit_fraction,
)
from experiments.run.checkpoint_io import (
    check_checkpoint_file,
    checkpoint_datamodule,
    weights_digest,
    write_json,
)
from experiments.run.checks import ExperimentError
from experiments.run.cli import exits_cleanly
from experiments.run.services import read_module
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.pruning.depth_cut import Baseline, CutPoint, choose_cut


class HeadHistory(L.Callback):
    """Every validation's accuracy of every auxiliary head (``val/aux_<k>/acc``), and a progress line per epoch
    (a check runs for minutes to an hour without a progress bar)."""

    def __init__(self, label: str = "") -> None:
        self.history: dict[int, list[float]] = {}
        self.label = label
        self.started = time.time()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or pl_module.aux_heads is None:
            return
        for k in pl_module.aux_heads.cut_points:
            value = trainer.callback_metrics.get(f"val/aux_{k}/acc")
            if value is not None:
                self.history.setdefault(int(k), []).append(float(value))
        accs = {k: h[-1] for k, h in self.history.items()}
        if accs and self.label:
            print(f"{self.label}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}, heads "
                  f"{100 * min(accs.values()):.2f}–{100 * max(accs.values()):.2f} % "
                  f"({(time.time() - self.started) / 60:.1f} min)", flush=True)


def train_heads(ckpt: str, data: L.LightningDataModule, cuts: list[int] | None, epochs: int, lr: float,
                head: str, seed: int, optimizer: str = "adam") -> tuple[dict[int, list[float]], AuxiliarySweep]:
    """Heads at ``cuts`` (all: ``None``) trained together on the frozen baseline in one fit (``optimizer`` at
    ``lr``, cosine over ``epochs``); their per-epoch validation accuracies and the sweep (costs, baseline
    accuracy)."""
    L.seed_everything(seed, verbose=False)
    module = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu", scheduler="cosine")
    sweep = AuxiliarySweep(start_epoch=0, epochs=epochs, head=head, cut_points=cuts, optimizer=optimizer, lr=lr)
    history = HeadHistory(label=f"{'all heads' if cuts is None or len(cuts) > 1 else f'cut {cuts[0]}'}, {optimizer}")
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[sweep, history],
                        num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    return history.history, sweep


def rules(accs: dict[int, float], costs: dict[int, dict[str, int]], baseline: Baseline,
          tolerance: float) -> dict[str, int]:
    """The cut the tolerance and the knee rule choose from one column of accuracies."""
    rows = [CutPoint(cut=k, params=costs[k]["params"], macs=costs[k]["macs"], acc=a) for k, a in sorted(accs.items())]
    return {rule: choose_cut(rows, baseline, rule=rule, tolerance=tolerance)[0] for rule in ("tolerance", "knee")}


def rank_correlation(a: dict[int, float], b: dict[int, float]) -> float | None:
    """Spearman's rank correlation of two columns over their common cut points (``None`` where a column
    is constant there: no ranking to compare)."""
    common = sorted(set(a) & set(b))
    if len({a[k] for k in common}) < 2 or len({b[k] for k in common}) < 2:
        return None
    return float(spearman_corrcoef(torch.tensor([a[k] for k in common]), torch.tensor([b[k] for k in common])))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline_ckpt", required=True, help="the trained baseline (a depth run's baseline.ckpt)")
    parser.add_argument("--sweep", default=None, help="that run's depth_sweep.json (a third column)")
    parser.add_argument("--data_root", default=None,
                        help="the data the baseline was trained on, elsewhere (default: the path its checkpoint "
                             "records; CIFAR-10 for a checkpoint that records none)")
    parser.add_argument("--image_size", type=positive_int, default=None,
                        help="default: the image size the baseline was trained at")
    parser.add_argument("--batch_size", type=positive_int, default=128)
    parser.add_argument("--train_subset", type=positive_int, default=None, help="training images per epoch")
    parser.add_argument("--epochs", type=positive_int, default=4)
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam, as the paper's heads")
    parser.add_argument("--head", default="replication")
    parser.add_argument("--cuts", type=int, nargs="+", default=None, help="cut points (default: all)")
    parser.add_argument("--tolerance", type=unit_fraction, default=0.01,
                        help="the tolerance rule's accuracy drop (0.01: one point)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the comparison as JSON here")
    parser.add_argument("--default_sweep", action="store_true",
                        help="add a column: the one-run sweep as depth_prune.py runs it by default (its optimiser "
                             "and learning rate, --sweep_epochs epochs on the whole training split)")
    parser.add_argument("--sweep_epochs", type=positive_int, default=1, help="epochs of --default_sweep")
    parser.add_argument("--sweep_lr", type=positive_float, default=None,
                        help="learning rate of --default_sweep (default: the sweep's own, AuxiliarySweep.lr); "
                             "another one is a candidate default, reported beside the default-rate sweeps")
    parser.add_argument("--num_workers", type=non_negative_int, default=2,
                        help="data-loading processes (0: in the main process, about half as fast on 2 cores)")
    parser.add_argument("--per_point_from", default=None,
                        help="take the per-point column from this earlier check of the same baseline and recipe "
                             "instead of training it again")
    return parser


def check_earlier(opts: argparse.Namespace) -> dict[str, Any]:
    """The check named by ``--per_point_from``, refused unless it measured the same baseline the same way."""
    try:
        earlier = json.loads(Path(opts.per_point_from).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExperimentError(f"--per_point_from {opts.per_point_from} is not a sweep check's JSON ({err})") from err
    if not isinstance(earlier, dict) or not isinstance(earlier.get("history"), dict) \
            or not {"per_point", "one_run"} <= set(earlier["history"]):
        raise ExperimentError(f"--per_point_from {opts.per_point_from} is not a sweep check's JSON (no per-point "
                              "and one-run histories)")
    ours = {"baseline_ckpt": opts.baseline_ckpt, "epochs": opts.epochs, "lr": opts.lr, "head": opts.head,
            "train_subset": opts.train_subset, "batch_size": opts.batch_size, "seed": opts.seed}
    differ = [f"{k} {earlier.get(k)!r} (here {v!r})" for k, v in ours.items() if earlier.get(k) != v]
    if differ:
        raise ExperimentError(f"--per_point_from {opts.per_point_from} measured another recipe: {', '.join(differ)}")
    recorded = earlier.get("baseline_weights_sha256")
    if not same_baseline(earlier, {"baseline_weights_sha256": opts.baseline_digest}):
        raise ExperimentError(f"--per_point_from {opts.per_point_from} measured other weights than --baseline_ckpt "
                              f"{opts.baseline_ckpt} holds now (weights sha256 {recorded[:12]}…, here "
                              f"{opts.baseline_digest[:12]}…): the checkpoint was retrained or replaced")
    return earlier


def same_baseline(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two checks (or what is known of one so far) measured one network: equal weight digests and equal
    baseline validation accuracies, each compared where both record it (a baseline retrained under one path
    is another network)."""
    digests = (a.get("baseline_weights_sha256"), b.get("baseline_weights_sha256"))
    accs = (a.get("baseline_val_acc"), b.get("baseline_val_acc"))
    return (None in digests or digests[0] == digests[1]) and \
        (None in accs or abs(float(accs[0]) - float(accs[1])) <= 1e-6)


def check_same_baseline(opts: argparse.Namespace, earlier: dict[str, Any] | None, acc: float) -> None:
    """An earlier check's baseline validation accuracy must be this one's (the only test left for a check
    written before the weights digest)."""
    if earlier is not None and not same_baseline(earlier, {"baseline_val_acc": acc}):
        raise ExperimentError(f"--per_point_from {opts.per_point_from} measured a baseline of validation accuracy "
                              f"{100 * float(earlier['baseline_val_acc']):.2f} %, --baseline_ckpt {opts.baseline_ckpt} "
                              f"has {100 * acc:.2f} %: another network (retrained or replaced); nothing written")


def check_cuts(ckpt: str, cuts: list[int] | None) -> None:
    """``--cuts`` are cut points of the baseline's network (its adapter numbers them), else one error line."""
    if cuts is None:
        return
    module = read_module(ImageClassifier, ckpt)
    count = len(module.adapter.cut_points(module.net, module.hparams.in_chans))
    outside = sorted({k for k in cuts if not 0 <= k < count})
    if outside:
        raise ExperimentError(f"--cuts {outside}: the baseline's {module.hparams.backbone} has cut points 0..{count - 1}")


def baseline_data(opts: argparse.Namespace, train_subset: int | None) -> L.LightningDataModule:
    """The data module the baseline was trained with (its dataset, split and image size, from the checkpoint),
    with ``--data_root`` / ``--image_size`` where given, this check's batch size and ``train_subset``."""
    try:
        return checkpoint_datamodule(opts.baseline_ckpt, opts.data_root, opts.image_size, batch_size=opts.batch_size,
                                     num_workers=opts.num_workers, train_subset=train_subset)
    except (ValueError, OSError) as err:
        raise ExperimentError(f"--baseline_ckpt {opts.baseline_ckpt}: {err}") from err


def default_sweep_recipe(epochs: int, lr: float | None = None) -> dict[str, Any]:
    """How :class:`AuxiliarySweep` trains its heads by default, for ``epochs`` epochs on the whole split
    (at learning rate ``lr`` instead of its own, where given)."""
    defaults = AuxiliarySweep()
    return {"optimizer": defaults.optimizer, "lr": defaults.lr if lr is None else lr, "epochs": epochs,
            "train_subset": None}


def default_sweep_column(opts: argparse.Namespace) -> tuple[dict[int, list[float]], AuxiliarySweep]:
    """The one-run sweep with :class:`AuxiliarySweep`'s default optimiser and learning rate, ``--sweep_epochs``
    epochs on the whole training split (what ``depth_prune.py`` measures unless told otherwise), and the sweep."""
    recipe = default_sweep_recipe(opts.sweep_epochs, opts.sweep_lr)
    data = baseline_data(opts, train_subset=None)
    history, sweep = train_heads(opts.baseline_ckpt, data, opts.cuts, recipe["epochs"], recipe["lr"], opts.head,
                                 opts.seed, recipe["optimizer"])
    return history, sweep


@exits_cleanly
def main(args: list[str] | None = None) -> dict[str, Any]:
    opts = build_parser().parse_args(args)
    check_checkpoint_file(opts.baseline_ckpt, "--baseline_ckpt")
    check_cuts(opts.baseline_ckpt, opts.cuts)
    opts.baseline_digest = weights_digest(opts.baseline_ckpt)
    started = time.time()
    earlier = check_earlier(opts) if opts.per_point_from else None
    if earlier is not None and not opts.default_sweep:
        raise ExperimentError("--per_point_from reuses an earlier check's columns: add --default_sweep, the column "
                              "to measure against them")
    default, sweep = default_sweep_column(opts) if opts.default_sweep else ({}, None)
    if earlier is None:
        data = baseline_data(opts, train_subset=opts.train_subset)
        one_run, sweep = train_heads(opts.baseline_ckpt, data, opts.cuts, opts.epochs, opts.lr, opts.head, opts.seed)
        per_point: dict[int, list[float]] = {}
        for i, k in enumerate(sorted(one_run), 1):
            history, _ = train_heads(opts.baseline_ckpt, data, [k], opts.epochs, opts.lr, opts.head, opts.seed)
            per_point[k] = history[k]
            print(f"per point {i}/{len(one_run)}: cut {k} → {100 * history[k][-1]:.2f} % "
                  f"(epochs: {', '.join(f'{100 * a:.2f}' for a in history[k])})", flush=True)
    else:
        per_point, one_run = ({int(k): v for k, v in earlier["history"][name].items()} for name in ("per_point", "one_run"))
        if sorted(per_point) != sorted(default):
            raise ExperimentError(f"--per_point_from {opts.per_point_from} holds cuts {sorted(per_point)}, this check "
                                  f"measures {sorted(default)}")
    cuts = sorted(one_run)
    baseline = Baseline(params=sweep.baseline["params"], macs=sweep.baseline["macs"], acc=sweep.baseline["acc"])
    check_same_baseline(opts, earlier, baseline.acc)
    columns = {"per_point": {k: h[-1] for k, h in per_point.items()}, "one_run": {k: h[-1] for k, h in one_run.items()}}
    if opts.default_sweep:
        columns["default_sweep"] = {k: h[-1] for k, h in default.items()}
    if opts.sweep:
        rows = json.loads(Path(opts.sweep).read_text())["rows"]
        columns["depth_run_sweep"] = {int(r["cut"]): float(r["acc"]) for r in rows if int(r["cut"]) in per_point}
    result = {
        "per_point_from": opts.per_point_from,
        "default_sweep": default_sweep_recipe(opts.sweep_epochs, opts.sweep_lr) if opts.default_sweep else None,
        "baseline_ckpt": opts.baseline_ckpt, "baseline_weights_sha256": opts.baseline_digest,
        "baseline_val_acc": baseline.acc, "epochs": opts.epochs, "lr": opts.lr,
        "optimizer": "adam, cosine", "head": opts.head, "seed": opts.seed, "train_subset": opts.train_subset,
        "batch_size": opts.batch_size, "num_workers": opts.num_workers,
        "costs": {str(k): sweep.costs[k] for k in cuts},
        "columns": {name: {str(k): v for k, v in col.items()} for name, col in columns.items()},
        "history": {"per_point": {str(k): v for k, v in per_point.items()},
                    "one_run": {str(k): v for k, v in one_run.items()},
                    **({"default_sweep": {str(k): v for k, v in default.items()}} if default else {})},
        "last_epoch_change": {str(k): h[-1] - h[-2] if len(h) > 1 else None for k, h in per_point.items()},
        "spearman_vs_per_point": {name: rank_correlation(col, columns["per_point"]) for name, col in columns.items()},
        "rules": {name: rules(col, sweep.costs, baseline, opts.tolerance) for name, col in columns.items()},
        "wall_time_s": round(time.time() - started, 1),  # this command's (the reused columns' are the earlier's)
        "command": "python experiments/sweep_check.py " + " ".join(sys.argv[1:] if args is None else args),
    }
    print(json.dumps({k: result[k] for k in ("spearman_vs_per_point", "rules")}, indent=1))
    if opts.out:
        write_json(opts.out, result)
    return result


if __name__ == "__main__":
    main()
