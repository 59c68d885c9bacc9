"""TinyML budget of a network: parameters, MACs, peak activation RAM, flash, latency, ONNX and int8.

    python experiments/bench/profile_model.py --ckpt PATH --image_size 32 --latency     # a trained (pruned) net
    python experiments/bench/profile_model.py --width_mult 0.25 --image_size 224         # from architecture args
    python experiments/bench/profile_model.py --ckpt PATH --image_size 32 --onnx out/net.onnx --int8 \\
        --calib_images 512 --eval_images 2000 --out out/profile.json

``--int8`` quantises the exported network with onnxruntime (static, QDQ, per-channel), calibrated on
``--calib_images`` CIFAR-10 training images, and reports its top-1 accuracy on ``--eval_images`` test
images next to the float ONNX model's.

(Not ``profile.py``: scripts run from ``experiments/`` put it first on ``sys.path``, where that name would
shadow the standard library's ``profile``, which ``torch._dynamo`` imports through ``cProfile``.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from experiments.run.arguments import OneLineArgumentParser, non_negative_int, positive_int
from experiments.run.checkpoint_io import write_json
from experiments.run.cli import exits_cleanly
from lightning_modules.backbones import build_net
from lightning_modules.deploy.export import check_onnx, export_onnx, onnx_accuracy, quantize_int8
from lightning_modules.deploy.profiling import tinyml_budget
from lightning_modules.models.mobilenet_v1 import NUM_BLOCKS

DEFAULT_DATA_ROOT = "../shared/data/cifar10-jpg.tar.gz"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", type=str, default=None, help="ImageClassifier checkpoint (overrides model args)")
    parser.add_argument("--backbone", type=str, default="mobilenet_v1",
                        help="mobilenet_v1 or a timm model name (timm arguments: --backbone_kwargs JSON)")
    parser.add_argument("--backbone_kwargs", type=json.loads, default=None, help='e.g. \'{"drop_rate": 0.1}\'')
    parser.add_argument("--width_mult", type=float, default=1.0)
    parser.add_argument("--channels", type=int, nargs="+", default=None, help="explicit stem + block widths")
    parser.add_argument("--num_blocks", type=positive_int, default=NUM_BLOCKS)
    parser.add_argument("--head_channels", type=int, nargs="*", default=[])
    parser.add_argument("--num_classes", type=positive_int, default=10)
    parser.add_argument("--stem_stride", type=int, default=2)
    parser.add_argument("--image_size", type=positive_int, default=224)
    parser.add_argument("--threads", type=positive_int, default=1, help="CPU threads for the latency measurements")
    parser.add_argument("--latency", action="store_true", help="measure PyTorch and onnxruntime latency")
    parser.add_argument("--warmup", type=non_negative_int, default=10)
    parser.add_argument("--runs", type=positive_int, default=50)
    parser.add_argument("--onnx", type=str, default=None, help="export here and check against PyTorch")
    parser.add_argument("--int8", action="store_true", help="int8-quantise the ONNX model and evaluate it")
    parser.add_argument("--data_root", type=str, default=DEFAULT_DATA_ROOT, help="CIFAR-10 folder or archive")
    parser.add_argument("--calib_images", type=positive_int, default=256, help="training images for calibration")
    parser.add_argument("--eval_images", type=int, default=1000, help="test images for int8 accuracy")
    parser.add_argument("--batch_size", type=positive_int, default=64)
    parser.add_argument("--out", type=str, default=None, help="write the results as JSON here")
    return parser


def load_net(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """The network of ``--ckpt`` (any pruned architecture) or of the model arguments, with its arch."""
    if args.ckpt is not None:
        from experiments.run.services import read_module
        from lightning_modules.image_classifier import ImageClassifier

        module = read_module(ImageClassifier, args.ckpt, "--ckpt")
        return module.net.eval(), dict(module.arch)
    if args.backbone != "mobilenet_v1":
        arch = {"backbone": args.backbone, "backbone_kwargs": args.backbone_kwargs or {},
                "num_classes": args.num_classes, "in_chans": 3, "dropout": 0.0, "structure": {}}
        try:
            return build_net(arch).eval(), arch
        except ValueError as err:  # an unknown name or arguments timm refuses: the message says which
            raise SystemExit(f"error: --backbone {args.backbone}: {' '.join(str(err).split())}") from err
    arch = {
        "num_classes": args.num_classes,
        "width_mult": args.width_mult,
        "channels": args.channels,
        "num_blocks": args.num_blocks,
        "head_channels": list(args.head_channels),
        "stem_stride": args.stem_stride,
    }
    return build_net(arch).eval(), arch


def cifar10_batches(
    root: str, split: str = "train", images: int = 256, image_size: int = 32, batch_size: int = 64
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float ``(images, labels)`` batches of a class-stratified CIFAR-10 subset, evaluation
    transform (no augmentation) for both splits."""
    from datamodules import CIFAR10DataModule
    from datamodules.batches import float_batches

    data = CIFAR10DataModule(
        root=root, image_size=image_size, batch_size=min(batch_size, images), num_workers=0,
        # fitting also builds the validation set from the test split: a subset keeps it from being decoded whole
        train_subset=images if split == "train" else None, eval_subset=images,
    )
    yield from float_batches(data, split)


def int8_report(args: argparse.Namespace, onnx_path: Path, int8_path: Path) -> dict[str, Any]:
    """Quantise ``onnx_path`` into ``int8_path`` and compare float and int8 accuracy on test images."""
    size = args.image_size
    calibration = (x.numpy() for x, _ in cifar10_batches(args.data_root, "train", args.calib_images, size,
                                                          args.batch_size))
    quantize_int8(onnx_path, int8_path, calibration)
    test = list(cifar10_batches(args.data_root, "test", args.eval_images, size, args.batch_size))
    return {
        "onnx_int8_path": str(int8_path),
        "onnx_int8_bytes": int8_path.stat().st_size,
        "calib_images": args.calib_images,
        "eval_images": sum(len(y) for _, y in test),
        "acc_fp32_onnx": onnx_accuracy(onnx_path, test, args.threads),
        "acc_int8_onnx": onnx_accuracy(int8_path, test, args.threads),
    }


def _human(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if "diff" in key else f"{value:.4f}"
    if isinstance(value, int) and key.startswith(("peak_ram", "flash", "onnx")) and not key.endswith("images"):
        return f"{value:,} B ({value / 1024:.1f} KiB)"
    if isinstance(value, int) and key in ("params", "macs"):
        return f"{value:,} ({value / 1e6:.3f} M)"
    return str(value)


def format_table(results: dict[str, Any]) -> str:
    """``key  value`` lines, sizes in bytes and KiB, counts in millions."""
    width = max(len(k) for k in results)
    return "\n".join(f"{k:<{width}}  {_human(k, v)}" for k, v in results.items() if k != "arch")


@exits_cleanly
def main(args: list[str] | None = None) -> dict[str, Any]:
    """Profile one network; prints a table, writes ``--out`` (JSON) if given, returns the results."""
    opts = build_parser().parse_args(args)
    torch.set_num_threads(opts.threads)
    net, arch = load_net(opts)
    results: dict[str, Any] = {"arch": arch}
    results.update(tinyml_budget(net, opts.image_size, opts.latency, opts.threads, opts.warmup, opts.runs))
    with tempfile.TemporaryDirectory() as tmp:
        if opts.onnx is not None or opts.int8:
            onnx_path = export_onnx(net, opts.onnx or Path(tmp) / "model.onnx", opts.image_size)
            results["onnx_path"] = str(onnx_path) if opts.onnx else None
            results["onnx_bytes"] = onnx_path.stat().st_size
            results["onnx_max_abs_diff"] = check_onnx(net, onnx_path, opts.image_size)
        if opts.int8:
            int8_path = onnx_path.with_suffix(".int8.onnx") if opts.onnx else Path(tmp) / "model.int8.onnx"
            results.update(int8_report(opts, onnx_path, int8_path))
            if not opts.onnx:
                results["onnx_int8_path"] = None
    print(f"arch  {arch}\n{format_table(results)}")
    if opts.out is not None:
        write_json(opts.out, results, default=_jsonable)
    return results


def _jsonable(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else str(value)


if __name__ == "__main__":
    main()
