"""Cost of the one-run depth-pruning sweep: all 14 auxiliary heads at once vs a single head.

    uv run experiments/bench_sweep.py                                        # CIFAR-10 @32 px, 1 epoch each
    uv run experiments/bench_sweep.py --train_subset 10000 --out docs/runs/bench_sweep_cpu_32px.json

de Leon & Atienza (arXiv:2204.10546) train one network per cut point. Here one sweep stage trains a head
at every cut point (stem + 13 blocks) on the frozen backbone in one pass. This script times, in one
process and in turn (sweep, one head, sweep, one head, … so a shared machine's drift hits both alike):

- ``sweep``: ``--epochs`` epochs of the 14-head sweep (``AuxiliarySweep``'s stage: heads attached,
  backbone frozen, validation of every head after each epoch);
- ``one_head``: the same epochs with the single head at ``--cut`` (the backbone runs up to that block).

The wall time of each ``fit`` (training and validation, no logger, no checkpoints) is reported and the
ratio sweep / one head, taken round by round (median).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from experiments.bench_throughput import DEFAULT_ROOT, resolve_device


def parse(args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=DEFAULT_ROOT, help="CIFAR-10 folder or archive")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved (sweep, one head) rounds")
    parser.add_argument("--cut", type=int, default=6, help="cut point of the single head (0 = after the stem)")
    parser.add_argument("--head", default="replication", help="head preset: replication, paper or linear")
    parser.add_argument("--train_subset", type=int, default=None, help="training images (all by default)")
    parser.add_argument("--eval_subset", type=int, default=None, help="validation images (all by default)")
    parser.add_argument("--baseline_ckpt", default=None, help="backbone weights (timing does not depend on them)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    opts = parser.parse_args(args)
    resolve_device(parser, opts)
    if opts.epochs <= 0 or opts.rounds <= 0:
        parser.error("--epochs and --rounds must be positive")
    if not 0 <= opts.cut <= 13:
        parser.error(f"--cut must be a MobileNetV1 cut point in 0..13, got {opts.cut}")
    return opts


def time_stage(datamodule: Any, opts: argparse.Namespace, cut_points: list[int] | None,
               baseline: dict | None = None) -> dict[str, Any]:
    """Wall time of one sweep-stage ``fit`` with heads at ``cut_points`` (all 14 for ``None``)."""
    import lightning as L

    from lightning_modules.image_classifier import ImageClassifier
    from lightning_modules.models.aux_heads import head_channels_of

    gpu = opts.device == "cuda"
    torch.manual_seed(0)
    model = ImageClassifier(num_classes=10, channels_last=gpu)
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


def main(args: list[str] | None = None) -> dict[str, Any]:
    opts = parse(args)
    command = shlex.join(["uv", "run", "experiments/bench_sweep.py", *(sys.argv[1:] if args is None else args)])
    from datamodules import CIFAR10DataModule

    datamodule = CIFAR10DataModule(root=opts.root, image_size=opts.image_size, batch_size=opts.batch_size,
                                   in_memory=True, train_subset=opts.train_subset, eval_subset=opts.eval_subset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    baseline = None
    if opts.baseline_ckpt:
        from experiments.cli import read_module
        from lightning_modules.image_classifier import ImageClassifier

        baseline = read_module(ImageClassifier, opts.baseline_ckpt).state_dict()
    runs = []
    for i in range(opts.rounds):
        for name, cuts in (("sweep", None), ("one_head", [opts.cut])):
            result = time_stage(datamodule, opts, cuts, baseline)
            runs.append({"round": i, "run": name, **result})
            print(f"round {i} {name:>8}: {result['seconds']:7.1f} s ({result['heads']} head(s), "
                  f"{result['steps']} steps)", flush=True)
    by = {(r["round"], r["run"]): r for r in runs}
    ratio = statistics.median(by[(i, "sweep")]["seconds"] / by[(i, "one_head")]["seconds"] for i in range(opts.rounds))
    result = {
        "device": torch.cuda.get_device_name() if opts.device == "cuda" else "cpu",
        "mode": f"{opts.device}-{opts.image_size}px", "image_size": opts.image_size,
        "batch_size": opts.batch_size, "epochs": opts.epochs, "rounds": opts.rounds, "cut": opts.cut,
        "head": opts.head, "train_images": len(datamodule.train_dataset),
        "threads": torch.get_num_threads(), "runs": runs,
        "sweep_s": statistics.median(by[(i, "sweep")]["seconds"] for i in range(opts.rounds)),
        "one_head_s": statistics.median(by[(i, "one_head")]["seconds"] for i in range(opts.rounds)),
        "ratio_sweep_vs_one_head": ratio,
        "command": command,
        "note": "runs alternate within one process (the machine may be shared with other work); "
                "ratio per round, median reported",
    }
    print(f"\n{result['mode']}, {opts.epochs} epoch(s) of {result['train_images']} images, batch "
          f"{opts.batch_size}, {opts.rounds} interleaved round(s); {result['note']}")
    print(f"  14-head sweep: {result['sweep_s']:.1f} s   one head (cut {opts.cut}): {result['one_head_s']:.1f} s   "
          f"ratio {ratio:.2f}x")
    print(f"  one run per cut point (13, as in the paper) at this one-head cost: {13 / ratio:.1f}x the sweep")
    if opts.out is not None:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"Wrote {opts.out}")
    return result


if __name__ == "__main__":
    main()
