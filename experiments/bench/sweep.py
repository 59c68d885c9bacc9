"""Cost of the one-run depth-pruning sweep: all 14 auxiliary heads at once vs one head per run.

    uv run experiments/bench/sweep.py                                        # CIFAR-10 @32 px, 1 epoch each
    uv run experiments/bench/sweep.py --cut all --train_subset 10000 --out docs/runs/bench_sweep_cpu_32px.json

de Leon & Atienza (arXiv:2204.10546) train one network per cut point. Here one sweep stage trains a head
at every cut point (stem + 13 blocks) on the frozen backbone in one pass. This script times, in one
process and in turn (sweep, one head, …, sweep, one head, … so a shared machine's drift hits all alike):

- ``sweep``: ``--epochs`` epochs of the 14-head sweep (``AuxiliarySweep``'s stage: heads attached,
  backbone frozen, validation of every head after each epoch);
- ``one_head@k`` for every ``--cut`` k: the same epochs with the single head at k (the backbone runs up
  to that block). ``--cut all`` times every cut point, so the sum is the cost of the paper's one run per
  cut point.

The wall time of each ``fit`` (training and validation, no logger, no checkpoints) is reported, with the
ratio sweep / one head per cut (round by round, median) and, for ``--cut all``, the ratio of the separate
runs' total to the sweep.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from experiments.bench.throughput import DEFAULT_ROOT, resolve_device
from experiments.run.arguments import OneLineArgumentParser, positive_int
from experiments.run.checkpoint_io import write_json
from experiments.run.cli import exits_cleanly

#: MobileNetV1's cut points: after the stem and after each of its 13 blocks.
NUM_CUTS = 14


def parse(args: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("--root", default=DEFAULT_ROOT, help="CIFAR-10 folder or archive")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--image_size", type=positive_int, default=32)
    parser.add_argument("--batch_size", type=positive_int, default=128)
    parser.add_argument("--epochs", type=positive_int, default=1)
    parser.add_argument("--rounds", type=positive_int, default=1, help="interleaved (sweep, one head) rounds")
    parser.add_argument("--cut", nargs="+", default=["6", "13"],
                        help="cut points of the single-head runs (0 = after the stem), or 'all' (0..13)")
    parser.add_argument("--head", default="replication", help="head preset: replication, paper or linear")
    parser.add_argument("--train_subset", type=positive_int, default=None, help="training images (all by default)")
    parser.add_argument("--eval_subset", type=positive_int, default=None, help="validation images (all by default)")
    parser.add_argument("--baseline_ckpt", default=None, help="backbone weights (timing does not depend on them)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    opts = parser.parse_args(args)
    resolve_device(parser, opts)
    if opts.epochs <= 0 or opts.rounds <= 0:
        parser.error("--epochs and --rounds must be positive")
    opts.cut = parse_cuts(parser, opts.cut)
    return opts


def parse_cuts(parser: argparse.ArgumentParser, values: list[str]) -> list[int]:
    """``--cut`` values → sorted MobileNetV1 cut points; ``all`` → 0..13."""
    if values == ["all"]:
        return list(range(NUM_CUTS))
    try:
        cuts = sorted({int(v) for v in values})
    except ValueError:
        parser.error(f"--cut takes cut points 0..{NUM_CUTS - 1} or 'all', got {' '.join(values)}")
    if not all(0 <= k < NUM_CUTS for k in cuts):
        parser.error(f"--cut must be MobileNetV1 cut points in 0..{NUM_CUTS - 1}, got {' '.join(values)}")
    return cuts


def time_stage(datamodule: Any, opts: argparse.Namespace, cut_points: list[int] | None,
               baseline: dict | None = None) -> dict[str, Any]:
    """Wall time of one sweep-stage ``fit`` with heads at ``cut_points`` (all 14 for ``None``)."""
    import lightning as L

    from lightning_modules.image_classifier import ImageClassifier
    from lightning_modules.models.aux_heads import head_channels_of

    gpu = opts.device == "cuda"
    torch.manual_seed(0)
    model = ImageClassifier(num_classes=10)
    if baseline is not None:
        model.load_state_dict(baseline)
    model.attach_aux_heads(head_channels_of(opts.head), cut_points)
    model.freeze_modules(["net"])
    trainer = L.Trainer(accelerator="gpu" if gpu else "cpu", devices=1, precision="bf16-mixed" if gpu else "32-true",
                        max_epochs=opts.epochs, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(model, datamodule)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "heads": len(model.aux_heads.cut_points), "steps": trainer.global_step}


@exits_cleanly
def main(args: list[str] | None = None) -> dict[str, Any]:
    opts = parse(args)
    command = shlex.join(["uv", "run", "experiments/bench/sweep.py", *(sys.argv[1:] if args is None else args)])
    from datamodules import CIFAR10DataModule

    datamodule = CIFAR10DataModule(root=opts.root, image_size=opts.image_size, batch_size=opts.batch_size,
                                   in_memory=True, train_subset=opts.train_subset, eval_subset=opts.eval_subset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    baseline = None
    if opts.baseline_ckpt:
        from experiments.run.services import read_module
        from lightning_modules.image_classifier import ImageClassifier

        baseline = read_module(ImageClassifier, opts.baseline_ckpt).state_dict()
    runs = []
    names = ["sweep", *(f"one_head@{k}" for k in opts.cut)]
    for i in range(opts.rounds):
        for name in names:
            result = time_stage(datamodule, opts, None if name == "sweep" else [int(name.split("@")[1])], baseline)
            runs.append({"round": i, "run": name, **result})
            print(f"round {i} {name:>12}: {result['seconds']:7.1f} s ({result['heads']} head(s), "
                  f"{result['steps']} steps)", flush=True)
    result = {
        "device": torch.cuda.get_device_name() if opts.device == "cuda" else "cpu",
        "mode": f"{opts.device}-{opts.image_size}px", "image_size": opts.image_size,
        "batch_size": opts.batch_size, "epochs": opts.epochs, "rounds": opts.rounds, "cuts": opts.cut,
        "head": opts.head, "train_images": len(datamodule.train_dataset),
        "val_images": len(datamodule.val_dataset), "threads": torch.get_num_threads(), "runs": runs,
        **summarise(runs, opts.cut, opts.rounds),
        "command": command,
        "note": "runs alternate within one process (the machine may be shared with other work); "
                "ratios per round, medians reported",
    }
    print(format_result(result))
    if opts.out is not None:
        write_json(opts.out, result)
        print(f"Wrote {opts.out}")
    return result


def summarise(runs: list[dict], cuts: list[int], rounds: int) -> dict[str, Any]:
    """Median seconds of the sweep and of each one-head run, ratios sweep / one head taken round by round;
    with every cut point timed, the separate runs' total against the sweep (the paper's cost / ours)."""
    by = {(r["round"], r["run"]): r["seconds"] for r in runs}
    out: dict[str, Any] = {
        "sweep_s": statistics.median(by[(i, "sweep")] for i in range(rounds)),
        "one_head_s": {str(k): statistics.median(by[(i, f"one_head@{k}")] for i in range(rounds)) for k in cuts},
        "ratio_sweep_vs_one_head": {str(k): statistics.median(by[(i, "sweep")] / by[(i, f"one_head@{k}")]
                                                              for i in range(rounds)) for k in cuts},
    }
    if len(cuts) == NUM_CUTS:
        out["separate_runs_s"] = statistics.median(sum(by[(i, f"one_head@{k}")] for k in cuts) for i in range(rounds))
        out["ratio_separate_vs_sweep"] = statistics.median(
            sum(by[(i, f"one_head@{k}")] for k in cuts) / by[(i, "sweep")] for i in range(rounds))
    return out


def format_result(r: dict[str, Any]) -> str:
    lines = [f"\n{r['mode']}, {r['epochs']} epoch(s) of {r['train_images']} images ({r['val_images']} validated), "
             f"batch {r['batch_size']}, head {r['head']}, {r['rounds']} interleaved round(s); {r['note']}",
             f"  14-head sweep: {r['sweep_s']:.1f} s"]
    for k, seconds in r["one_head_s"].items():
        lines.append(f"  one head at cut {k:>2}: {seconds:6.1f} s   sweep / one head {r['ratio_sweep_vs_one_head'][k]:.2f}x")
    if "ratio_separate_vs_sweep" in r:
        lines.append(f"  one run per cut point (14, as in the paper): {r['separate_runs_s']:.1f} s = "
                     f"{r['ratio_separate_vs_sweep']:.2f}x the sweep")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
