"""Deployment ground truth: export trained nets fully int8, run them in TFLite Micro, and put TFLM's
arena and flash beside our estimates; the report sections for ``docs/RESULTS.md``.

    python experiments/reports/deploy.py --net baseline=PATH --net cut6=PATH ... \\
        --calib_images 256 --out docs/runs/deploy_cifar10_32.json [--firmware --arch cortex-m4 --clock_mhz 120]

For each ``NAME=CHECKPOINT`` (any ImageClassifier checkpoint: unpruned, cut, width-pruned, both): fp32
accuracy (PyTorch) and int8 accuracy (TFLM) on the same test images, the TFLM arena (bytes the
interpreter allocates) against the calibrated estimate (:mod:`lightning_modules.deploy.tflm_estimate`)
and the older activation-pair estimate (``peak_ram_int8``), the ``.tflite`` bytes against the calibrated
and the older (``flash_int8``) estimates, and MACs. The data are those each checkpoint was trained with
(its saved datamodule: any dataset of :mod:`datamodules`, any backbone), ``--data_root`` /
``--image_size`` replacing the saved ones.

``--firmware``: each net also as Cortex-M firmware (:mod:`experiments.reports.deploy_target`): bundle with
the first test image, built against TFLM + CMSIS-NN, run in QEMU, its output held to the host
interpreter's; text / data / bss, flash, RAM, the arena used on the target, instructions per inference
and the latency they give at ``--clock_mhz``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from experiments.reports.deploy_target import (
    firmware_line,
    firmware_row,
    firmware_section,
    first_test_image,
)
from experiments.reports.format import kb
from experiments.run.arguments import OneLineArgumentParser, positive_int
from experiments.run.checkpoint_io import check_checkpoint_file, checkpoint_datamodule, write_json
from experiments.run.cli import exits_cleanly
from lightning_modules.deploy.errors import DeploymentError
from lightning_modules.deploy.tflite_file import require_tflite
from lightning_modules.deploy.verify import deploy_net
from lightning_modules.pruning.budget import KB

DEFAULT_DATA_ROOT = "../shared/data/cifar10-jpg.tar.gz"


# ------------------------------------------------------------------------------------------ plotting
def plot_budget(candidates: list, budget: Any, chosen: Any, measured: dict[str, Any] | None,
                path: str | Path) -> Path:
    """Flash (predicted) vs predicted accuracy of every candidate, marker by whether it fits the RAM
    limit, the flash limit as a line, the chosen candidate and the measured (TFLM) result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_modules.pruning.budget import fits

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for ok, marker, label in ((True, "o", "fits"), (False, "x", "over budget")):
        rows = [c for c in candidates if fits(c, budget) == ok and c.acc is not None]
        if rows:
            ax.scatter([c.flash_bytes / KB for c in rows], [c.acc for c in rows], marker=marker,
                       label=f"candidates ({label})", alpha=0.7)
    ax.axvline(budget.flash_kb, color="red", linestyle="--", label=f"flash budget {budget.flash_kb:g} KB")
    if chosen is not None and chosen.acc is not None:
        ax.scatter([chosen.flash_bytes / KB], [chosen.acc], s=160, facecolors="none", edgecolors="black",
                   linewidths=2, label=f"chosen {chosen.name} (predicted)")
    if measured:
        ax.scatter([measured["flash_bytes"] / KB], [measured["int8_acc"]], marker="*", s=200, color="gold",
                   edgecolors="black", label="measured: TFLM int8 acc, .tflite bytes")
    ax.set_xscale("log")
    ax.set_xlabel(".tflite size, KB (predicted; log scale)")
    ax.set_ylabel("top-1 accuracy (predicted)")
    ax.set_title(f"Budget {budget.flash_kb:g} KB flash / {budget.ram_kb:g} KB RAM "
                 f"(× = over the flash or RAM limit)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ report sections
def deployment_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| net | MMACs | fp32 acc | int8 TFLM acc | TFLM arena KB | est. KB (err) | old est. KB (err) "
             "| .tflite KB | est. KB (err) | old est. KB (err) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['macs'] / 1e6:.2f} | {r['fp32_acc']:.4f} | {r['int8_acc']:.4f} "
            f"| {kb(r['arena_bytes'], 1)} | {kb(r['est_arena_bytes'], 1)} ({r['arena_error']:+.2%}) "
            f"| {kb(r['old_est_peak_ram_int8'], 1)} ({r['old_arena_error']:+.1%}) "
            f"| {kb(r['flash_bytes'], 1)} | {kb(r['est_flash_bytes'], 1)} ({r['flash_error']:+.2%}) "
            f"| {kb(r['old_est_flash_int8'], 1)} ({r['old_flash_error']:+.1%}) |")
    return lines


def budget_rows(summaries: list[dict[str, Any]]) -> list[str]:
    lines = ["| budget (flash / RAM) | candidates fitting | chosen | predicted acc | fp32 test acc "
             "| int8 TFLM acc | .tflite KB (pred.) | TFLM arena KB (pred.) | fits |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    from lightning_modules.pruning.budget import Budget, Candidate, fits

    for s in summaries:
        fb = s["fit_budget"]
        budget = Budget(**fb["budget"])
        cands = [Candidate(**{k: v for k, v in c.items() if k != "name"}) for c in fb["candidates"]]
        chosen, m = fb["chosen"], fb["measured"]
        lines.append(
            f"| {budget.flash_kb:g} KB / {budget.ram_kb:g} KB | {sum(fits(c, budget) for c in cands)}/{len(cands)} "
            f"| {chosen['name']} | {chosen['acc']:.4f} | {m['fp32_acc']:.4f} | {m['int8_acc']:.4f} "
            f"| {kb(m['flash_bytes'], 1)} ({kb(chosen['flash_bytes'], 1)}) | {kb(m['arena_bytes'], 1)} "
            f"({kb(chosen['ram_bytes'], 1)}) | {'yes' if fb['fits_measured'] else 'NO'} |")
    return lines


def deployment_sections(runs_dir: str | Path = "docs/runs") -> list[str]:
    """Markdown lines for ``docs/RESULTS.md``: the deployment table (``deploy_*.json``) and the budget
    runs (``*/summary.json`` with a ``fit_budget`` entry), each with its command."""
    runs_dir = Path(runs_dir)
    lines: list[str] = []
    for path in sorted(runs_dir.glob("deploy_*.json")):
        doc = json.loads(path.read_text())
        lines += [f"## Deployment in TFLite Micro ({path.stem})", "",
                  f"`{doc.get('command', '')}`", "",
                  f"int8: per-channel weights (FC per-tensor), int8 activations and input/output, calibrated on "
                  f"{doc.get('calib_images')} training images; accuracies on {doc.get('eval_images')} test images. "
                  "Arena: TFLM's own allocation report (host build). Error = estimate / TFLM − 1.",
                  *([doc["note"]] if doc.get("note") else []), ""]
        lines += deployment_table(doc["nets"]) + [""] + firmware_section(doc)
    budget = []
    for path in sorted(runs_dir.glob("*/summary.json")):
        doc = json.loads(path.read_text())
        if "fit_budget" in doc:
            budget.append({**doc, "_path": str(path)})
    if budget:
        lines += ["## Pruning to a budget (fit_budget.py)", ""]
        lines += [f"- `{s['fit_budget'].get('command', '').replace('python experiments/', 'uv run experiments/', 1)}`"
                  for s in budget] + [""]
        lines += budget_rows(budget) + [""]
        lines += [f"![budget {s['fit_budget']['budget']['flash_kb']:g} KB / {s['fit_budget']['budget']['ram_kb']:g} KB]"
                  f"(runs/{Path(s['_path']).parent.name}/fit_budget.png)" for s in budget
                  if (Path(s["_path"]).parent / "fit_budget.png").is_file()] + [""]
    return lines


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("--net", action="append", required=True, metavar="NAME=CKPT",
                        help="a checkpoint to deploy (repeat)")
    parser.add_argument("--data_root", default=None, help="dataset folder or archive (default: the one saved in "
                        f"each checkpoint, else {DEFAULT_DATA_ROOT})")
    parser.add_argument("--image_size", type=positive_int, default=None,
                        help="default: the checkpoint's saved image size, else 32")
    parser.add_argument("--calib_images", type=positive_int, default=256, help="training images for int8 calibration")
    parser.add_argument("--eval_images", type=int, default=None, help="test images (default: all)")
    parser.add_argument("--out_dir", default="outputs/deploy", help="where the .tflite files go")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--firmware", action="store_true", help="also build each net as Cortex-M firmware and run "
                        "it in QEMU (first test image): footprint, arena on the target, instructions, latency")
    parser.add_argument("--arch", default="cortex-m4", choices=["cortex-m4", "cortex-m7", "cortex-m3"])
    parser.add_argument("--clock_mhz", type=float, default=120.0, help="clock of the latency estimate")
    return parser


@exits_cleanly
def main(args: list[str] | None = None) -> dict[str, Any]:
    import sys

    from lightning_modules.deploy.cortexm import (
        FirmwareRunError,
        FirmwareTooLarge,
        ToolchainMissing,
        require_toolchain,
    )
    from lightning_modules.deploy.firmware import FirmwareError
    from lightning_modules.image_classifier import ImageClassifier

    opts = build_parser().parse_args(args)
    bad = [item for item in opts.net if "=" not in item or not item.split("=", 1)[0]]
    if bad:
        raise SystemExit(f"error: --net {bad[0]}: expected NAME=CKPT, e.g. --net cut6=<run dir>/checkpoints/last.ckpt")
    nets = dict(item.split("=", 1) for item in opts.net)
    for ckpt in nets.values():  # before any data is decoded
        check_checkpoint_file(ckpt, "--net")
    require_tflite()  # one line naming what is missing, not an import traceback half-way through
    if opts.firmware:
        try:
            require_toolchain()
        except ToolchainMissing as err:
            raise SystemExit(f"error: --firmware: {err}") from err
    datasets: dict[tuple, Any] = {}  # one set-up datamodule per (class, root, image size)
    rows: dict[str, dict[str, Any]] = {}
    command = "python experiments/reports/deploy.py " + " ".join(sys.argv[1:] if args is None else args)

    def document(pending: list[str]) -> dict[str, Any]:
        """The JSON so far; ``pending`` names the nets not yet done (absent once all are)."""
        doc = {"command": command, "calib_images": opts.calib_images,
               "eval_images": next(iter(rows.values()))["eval_images"], "nets": rows}
        if opts.out:  # written after every net, so a long run that stops keeps what it measured
            write_json(opts.out, {**doc, **({"pending": pending} if pending else {})})
        return doc

    for done, (name, ckpt) in enumerate(nets.items(), 1):
        train_images = max(opts.calib_images, 10)
        data = checkpoint_datamodule(ckpt, opts.data_root, opts.image_size, default_root=DEFAULT_DATA_ROOT,
                                     batch_size=min(100, train_images), eval_batch_size=100, num_workers=0,
                                     train_subset=train_images, eval_subset=opts.eval_images)
        key = (type(data).__name__, str(data.hparams.root), int(data.hparams.image_size))
        if key not in datasets:
            data.setup("fit")
            data.setup("test")
            datasets[key] = data
        data = datasets[key]
        module = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu")
        try:
            row = deploy_net(module.net, data, Path(opts.out_dir) / f"{name}.tflite", opts.calib_images,
                             opts.eval_images)
        except DeploymentError as err:  # an unsupported op, a broken scale, an interpreter crash
            raise SystemExit(f"error: {name}: {' '.join(str(err).split())}") from err
        rows[name] = {"checkpoint": ckpt, "arch": module.arch, "dataset": type(data).__name__,
                      "data_root": str(data.hparams.root), **row,
                      "tflite_path": str(Path(opts.out_dir) / f"{name}.tflite")}  # as given: no machine path
        r = rows[name]
        print(f"{name}: fp32 {r['fp32_acc']:.4f} int8 {r['int8_acc']:.4f} | arena {r['arena_bytes']:,} "
              f"est {r['est_arena_bytes']:,} ({r['arena_error']:+.1%}) | flash {r['flash_bytes']:,} "
              f"est {r['est_flash_bytes']:,} ({r['flash_error']:+.1%})", flush=True)
        if opts.firmware:
            bundle = Path(opts.out_dir) / f"{name}_firmware"
            try:
                r["firmware"] = firmware_row(r["tflite_path"], bundle, first_test_image(data), opts.arch,
                                             opts.clock_mhz)
            except FirmwareTooLarge as err:  # a result, not a failure: the net does not fit the target
                r["firmware"] = {"arch": opts.arch, "error": str(err)}
                print(f"{name}: firmware {opts.arch}: {err}", flush=True)
                doc = document(list(nets)[done:])
                continue
            except (FirmwareError, FirmwareRunError, ToolchainMissing) as err:
                text = str(err)
                if "\n" in text:
                    log = bundle.parent / f"{bundle.name}.log"
                    log.write_text(text + "\n")
                    text = f"{text.splitlines()[0]} (full output in {log})"
                raise SystemExit(f"error: {name}: firmware: {text}") from err
            print(firmware_line(name, r["firmware"]), flush=True)
        doc = document(list(nets)[done:])
    print("\n".join(deployment_table(rows) + [""] + firmware_section(doc)))
    return doc


if __name__ == "__main__":
    main()
