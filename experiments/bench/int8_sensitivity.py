"""Why a network loses accuracy in int8: every activation tensor's own cost, measured in PyTorch.

    uv run experiments/bench/int8_sensitivity.py --ckpt PATH [--calib_images 256] [--eval_images 2000] \\
        [--top 10] [--out sensitivity.json]

From a checkpoint (any ImageClassifier: unpruned, cut, width-pruned, any backbone) and the data it was
trained with: the float accuracy, the accuracy with every activation tensor fake-quantised per tensor as
TFLite does, and, tensor by tensor, the accuracy lost when that tensor alone is int8, beside its range, its
int8 step and its channel spread (the widest channel's maximum over the median channel's). A tensor with a
large spread and a large cost is one whose channels TFLite's single activation scale cannot serve
(:mod:`lightning_modules.deploy.int8_sensitivity`). Calibration and evaluation images are class-stratified
subsets of the training and test splits. The interpreter's int8 accuracy: ``experiments/reports/deploy.py``.
"""

from __future__ import annotations

import argparse
from typing import Any

from datamodules.batches import float_batches
from experiments.run.arguments import OneLineArgumentParser, positive_int
from experiments.run.checkpoint_io import check_checkpoint_file, checkpoint_datamodule, write_json
from experiments.run.cli import exits_cleanly
from lightning_modules.deploy.int8_sensitivity import tensor_sensitivity
from lightning_modules.image_classifier import ImageClassifier


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="an ImageClassifier checkpoint")
    parser.add_argument("--data_root", default=None, help="replaces the checkpoint's data root")
    parser.add_argument("--image_size", type=positive_int, default=None, help="replaces the checkpoint's")
    parser.add_argument("--calib_images", type=positive_int, default=256, help="training images for the ranges")
    parser.add_argument("--eval_images", type=positive_int, default=2000, help="test images for the accuracies")
    parser.add_argument("--top", type=positive_int, default=10, help="tensors printed, costliest first")
    parser.add_argument("--out", default=None, help="write every tensor's figures as JSON here")
    return parser


@exits_cleanly
def main(args: list[str] | None = None) -> dict[str, Any]:
    opts = build_parser().parse_args(args)
    check_checkpoint_file(opts.ckpt)
    data = checkpoint_datamodule(opts.ckpt, opts.data_root, opts.image_size, batch_size=min(opts.calib_images, 256),
                                 eval_batch_size=250, num_workers=0, train_subset=max(opts.calib_images, 10),
                                 eval_subset=opts.eval_images)
    data.setup("fit")
    data.setup("test")
    net = ImageClassifier.load_from_checkpoint(opts.ckpt, map_location="cpu").net.eval()
    calibration = [x for x, _ in float_batches(data, "train", opts.calib_images)]
    batches = list(float_batches(data, "test", opts.eval_images))
    base, everything, costs = tensor_sensitivity(net, calibration, batches)
    print(f"fp32 {100 * base:.2f} % | every activation int8 (per tensor) {100 * everything:.2f} % "
          f"({100 * (everything - base):+.2f} pp) | {sum(len(y) for _, y in batches)} test images")
    print(f"{'tensor':44s} {'module':16s} {'alone (pp)':>10s} {'range':>22s} {'step':>8s} {'spread':>8s}")
    for c in costs[:opts.top]:
        spread = "—" if c.spread is None else f"{c.spread:.1f}"
        print(f"{c.name:44s} {c.kind:16s} {-100 * c.drop:+10.2f} {f'[{c.low:.3g}, {c.high:.3g}]':>22s} "
              f"{c.step:8.4f} {spread:>8s}")
    result = {"checkpoint": opts.ckpt, "calib_images": opts.calib_images, "eval_images": opts.eval_images,
              "fp32_acc": base, "int8_activations_acc": everything,
              "tensors": [{**vars(c), "step": c.step} for c in costs]}
    if opts.out:
        write_json(opts.out, result)
    return result


if __name__ == "__main__":
    main()
