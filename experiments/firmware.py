"""Firmware bundle for one int8 net (TensorFlow Lite Micro sources a board project takes as they are), and
optionally its Cortex-M build, a run in QEMU and the instruction count of one inference.

    uv run experiments/firmware.py --tflite net.tflite --out outputs/firmware/net
    uv run experiments/firmware.py --ckpt PATH --data_root ../shared/data/cifar10-jpg.tar.gz \\
        --out outputs/firmware/net --run --arch cortex-m4 --clock_mhz 120

``--run`` builds TFLM + CMSIS-NN for the core once (cached, see :mod:`lightning_modules.deploy.cortexm`),
links the bundle, runs it ``--repeat`` times in ``qemu-system-arm``, checks that its int8 output equals
the host TFLM interpreter's and that the instruction count repeats, and writes ``firmware.json`` into
the bundle: flash / RAM from the linker, the arena TFLM used on the 32-bit target, instructions and the
latency estimated at ``--clock_mhz`` (:mod:`lightning_modules.deploy.mcu_latency`). Any failure ends with
one ``error:`` line and exit status 1; the full build or emulator output is kept in ``OUT.log``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lightning_modules.deploy.cortexm import FirmwareRunError, ToolchainMissing, require_toolchain
from lightning_modules.deploy.firmware import ARENA_MARGIN, FirmwareError, write_bundle
from lightning_modules.deploy.mcu_latency import MLPERF_TINY_VWW
from lightning_modules.deploy.tflite_file import MissingDependency
from lightning_modules.deploy.verify import run_on_target

DEFAULT_DATA_ROOT = "../shared/data/cifar10-jpg.tar.gz"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tflite", help="an int8 .tflite (int8 input and output)")
    source.add_argument("--ckpt", help="an ImageClassifier checkpoint: exported fully int8 first")
    parser.add_argument("--out", required=True, help="the bundle folder (replaced)")
    parser.add_argument("--image", default=None, help="test image: a .npy of one normalised float image "
                        "(CHW or HWC); default: the first test image with --ckpt, else seeded uniform values over "
                        "the int8 input's range")
    parser.add_argument("--arena_margin", type=float, default=ARENA_MARGIN,
                        help="fraction added to TFLM's planned arena for kTensorArenaSize")
    parser.add_argument("--data_root", default=DEFAULT_DATA_ROOT, help="with --ckpt: CIFAR-10 folder or archive")
    parser.add_argument("--image_size", type=int, default=32, help="with --ckpt")
    parser.add_argument("--calib_images", type=int, default=256, help="with --ckpt: int8 calibration images")
    parser.add_argument("--run", action="store_true", help="build for --arch, run in QEMU, count instructions")
    parser.add_argument("--arch", default="cortex-m4", choices=["cortex-m4", "cortex-m7", "cortex-m3"])
    parser.add_argument("--repeat", type=int, default=2, help="emulated runs; their counts must be equal")
    parser.add_argument("--clock_mhz", type=float, default=MLPERF_TINY_VWW.clock_mhz,
                        help="clock of the latency estimate")
    parser.add_argument("--timeout_s", type=float, default=600.0, help="limit of one emulated run")
    return parser


def _from_checkpoint(opts: argparse.Namespace) -> tuple[Path, np.ndarray]:
    """Export the checkpoint's net fully int8 into the bundle's parent folder; its first test image."""
    from datamodules import CIFAR10DataModule
    from datamodules.batches import float_batches
    from lightning_modules.deploy.tflite import export_int8_tflite
    from lightning_modules.image_classifier import ImageClassifier

    images = max(opts.calib_images, 10)
    data = CIFAR10DataModule(root=opts.data_root, image_size=opts.image_size, batch_size=min(100, images),
                             num_workers=0, train_subset=images, eval_subset=1)
    data.setup("fit")
    data.setup("test")
    net = ImageClassifier.load_from_checkpoint(opts.ckpt, map_location="cpu").net.eval()
    calibration = np.concatenate([x.numpy() for x, _ in float_batches(data, "train", opts.calib_images)])
    image = next(float_batches(data, "test", 1))[0].numpy()
    out = Path(opts.out)
    path = export_int8_tflite(net, out.parent / f"{out.name}.tflite", calibration, opts.image_size)
    return path, image


def main(args: list[str] | None = None) -> dict[str, Any]:
    opts = build_parser().parse_args(args)
    out = Path(opts.out)
    log = out.parent / f"{out.name}.log"
    try:
        if opts.repeat < 1:
            raise FirmwareError(f"--repeat must be at least 1, got {opts.repeat}")
        if opts.run:
            require_toolchain()  # before any export: one line naming the missing programs
        image = np.load(opts.image) if opts.image else None
        if opts.ckpt:
            model, first_test = _from_checkpoint(opts)
            image = first_test if image is None else image
        else:
            model = Path(opts.tflite)
            if not model.is_file():
                raise FirmwareError(f"--tflite {model}: no such file")
        record = write_bundle(model, out, image=image, margin=opts.arena_margin)
        if opts.run:
            record["target"] = run_on_target(out, record["expected_output"], opts.arch, opts.repeat,
                                             opts.clock_mhz, opts.timeout_s)
    except (FirmwareError, FirmwareRunError, ToolchainMissing, MissingDependency, OSError, ValueError) as err:
        text = str(err)
        if "\n" in text:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(text + "\n")
            text = f"{text.splitlines()[0]} (full output in {log})"
        raise SystemExit(f"error: {text}") from err
    record["command"] = "python experiments/firmware.py " + " ".join(sys.argv[1:] if args is None else args)
    (out / "firmware.json").write_text(json.dumps(record, indent=2) + "\n")
    ops = ", ".join(f"{op} ×{n}" for op, n in sorted(record["ops"].items()))
    print(f"bundle {out}: model {record['model_bytes']:,} B, ops {ops}, arena {record['arena_size_bytes']:,} B "
          f"(plan {record['arena_plan']['arena_bytes']:,} + {record['arena_margin']:.0%}), "
          f"expected class {record['expected_class']}")
    if "target" in record:
        t = record["target"]
        print(f"{t['arch']}: output equals the host interpreter's, class {t['class']}; "
              f"{t['instructions']:,} instructions per inference (same in {t['runs']} runs); flash {t['flash_bytes']:,} B "
              f"(text {t['text_bytes']:,} + data {t['data_bytes']:,}), RAM {t['ram_bytes']:,} B (data + bss), "
              f"arena used {t['arena_used_bytes']:,} B, stack {t['stack_used_bytes']:,} B; "
              f"estimated {t['latency_ms_estimate']:.1f} ms at {t['clock_mhz']:g} MHz")
    return record


if __name__ == "__main__":
    main()
