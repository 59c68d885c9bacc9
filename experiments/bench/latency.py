"""Do fewer MACs mean proportionally less latency? Unpruned MobileNetV1-1.0 against pruned versions.

    python experiments/bench/latency.py                              # 224 px, 1 thread, 50 runs
    python experiments/bench/latency.py --image_size 64 --runs 5     # quick check

Networks: MobileNetV1-1.0; the block-6 depth cut with the (64, 32) head (de Leon & Atienza,
arXiv:2204.10546); width 0.5 and 0.25. For each: MACs, MAC ratio (MACs of the unpruned net / MACs),
batch-1 latency with PyTorch and onnxruntime, speed-up (unpruned latency / latency), and efficiency =
speed-up / MAC ratio, which is 1 when latency falls exactly as the MACs do (target ``--target``).
All networks are measured in one process, one after the other, on ``--threads`` CPU threads.

``--fused`` adds the column ``torch_fused``: PyTorch eager on a copy with every BatchNorm folded into its
convolution (``lightning_modules.models.fusion.fuse_conv_bn``), and ``torch_fused_cl``: the same in NHWC
(channels_last). ``--rounding`` adds width-pruned rows whose channel counts are (``_r8``) or are not
(``_r1``) rounded to multiples of 8 (``keep_count`` at sparsity 0.52 and 0.77: about width 0.5 and 0.25).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments.run.arguments import OneLineArgumentParser, non_negative_int, positive_int
from experiments.run.checkpoint_io import write_json
from experiments.run.cli import exits_cleanly
from lightning_modules.deploy.export import export_onnx
from lightning_modules.deploy.op_profile import onnx_op_profile, torch_op_profile
from lightning_modules.deploy.profiling import count_macs, measure_latency_onnx, measure_latency_torch
from lightning_modules.models.fusion import fuse_conv_bn
from lightning_modules.models.mobilenet_v1 import BASE_CHANNELS, MobileNetV1
from lightning_modules.pruning.width import keep_count

#: Sparsities of the rounding rows: kept counts that are not multiples of 8 without rounding.
ROUNDING_SPARSITIES = (0.52, 0.77)


def benchmark_nets(num_classes: int = 1000) -> dict[str, nn.Module]:
    """The unpruned network first, then the pruned ones."""
    return {
        "mobilenet_v1_1.0": MobileNetV1(num_classes=num_classes),
        "depth_cut6_head64_32": MobileNetV1(num_classes=num_classes, num_blocks=6, head_channels=(64, 32)),
        "width_0.5": MobileNetV1(num_classes=num_classes, width_mult=0.5),
        "width_0.25": MobileNetV1(num_classes=num_classes, width_mult=0.25),
    }


def rounding_nets(num_classes: int = 1000) -> dict[str, nn.Module]:
    """Width-pruned MobileNetV1s with the kept channel counts rounded to 1 and to 8 (the stem and the
    classifier's inputs included), as a width prune with ``round_to`` 1 or 8 leaves them."""
    nets = {}
    for sparsity in ROUNDING_SPARSITIES:
        for round_to in (1, 8):
            channels = [keep_count(c, sparsity, round_to) for c in BASE_CHANNELS]
            nets[f"sparsity_{sparsity}_r{round_to}"] = MobileNetV1(num_classes=num_classes, channels=channels)
    return nets


def torch_columns(net: nn.Module, fused: bool) -> dict[str, tuple[nn.Module, bool]]:
    """The PyTorch variants to time: name → (network, channels_last input)."""
    columns = {"torch": (net, False)}
    if fused:
        folded, _ = fuse_conv_bn(net)
        columns["torch_fused"] = (folded, False)
        columns["torch_fused_cl"] = (fuse_conv_bn(net)[0].to(memory_format=torch.channels_last), True)
    return columns


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("--image_size", type=positive_int, default=224)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--warmup", type=non_negative_int, default=10)
    parser.add_argument("--runs", type=positive_int, default=50)
    parser.add_argument("--num_classes", type=positive_int, default=1000)
    parser.add_argument("--target", type=float, default=0.8, help="wanted speed-up / MAC ratio")
    parser.add_argument("--no_onnx", action="store_true", help="measure PyTorch only")
    parser.add_argument("--out", type=str, default=None, help="write the rows as JSON here")
    parser.add_argument("--profile_ops", action="store_true",
                        help="also record per-op-type time (onnxruntime profiler, torch.profiler)")
    parser.add_argument("--fused", action="store_true",
                        help="add PyTorch columns with BatchNorm folded into the convolutions (NCHW and NHWC)")
    parser.add_argument("--rounding", action="store_true",
                        help="add width-pruned rows with channel counts rounded to 1 and to 8")
    parser.add_argument("--only", nargs="*", default=None, help="measure only these rows (names; the unpruned row, which the ratios refer to, always)")
    return parser


def add_ratios(rows: list[dict[str, Any]], backends: list[str], target: float = 0.8) -> list[dict[str, Any]]:
    """MAC ratio, speed-up and efficiency of every row relative to the first (unpruned) one."""
    base = rows[0]
    for row in rows:
        row["mac_ratio"] = base["macs"] / row["macs"]
        for backend in backends:
            speedup = base[f"{backend}_ms"] / row[f"{backend}_ms"]
            row[f"{backend}_speedup"] = speedup
            row[f"{backend}_efficiency"] = speedup / row["mac_ratio"]
            row[f"{backend}_target_met"] = row[f"{backend}_efficiency"] >= target
    return rows


def format_rows(rows: list[dict[str, Any]], backends: list[str]) -> str:
    header = f"{'network':<22} {'MMACs':>8} {'MAC ratio':>9}"
    for b in backends:
        header += f" | {b + ' ms':>10} {'speed-up':>8} {'sp/MACr':>7} {'≥target':>7}"
    lines = [header, "-" * len(header)]
    for row in rows:
        line = f"{row['name']:<22} {row['macs'] / 1e6:>8.1f} {row['mac_ratio']:>9.2f}"
        for b in backends:
            met = "yes" if row[f"{b}_target_met"] else "no"
            line += (f" | {row[f'{b}_ms']:>10.3f} {row[f'{b}_speedup']:>8.2f}"
                     f" {row[f'{b}_efficiency']:>7.2f} {met:>7}")
        lines.append(line)
    return "\n".join(lines)


def format_op_shares(rows: list[dict[str, Any]], top: int = 6) -> str:
    """Each network's slowest op types (ms per inference) and the ratio to the unpruned net's time in
    that op type, next to the MAC ratio."""
    lines = []
    for key in ("onnx_ops_ms", "torch_ops_ms"):
        base = rows[0].get(key, {})
        for row in rows:
            ops = row.get(key)
            if not ops:
                continue
            total = sum(ops.values())
            shares = ", ".join(f"{op} {ms:.2f} ({base.get(op, float('nan')) / ms:.1f}×)"
                               for op, ms in sorted(ops.items(), key=lambda kv: -kv[1])[:top])
            lines.append(f"{key[:-7]:<5} {row['name']:<22} total {total:.2f} ms: {shares}")
    return "\n".join(lines)


@exits_cleanly
def main(args: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure every network; prints a table, writes ``--out`` (JSON) if given, returns the rows."""
    opts = build_parser().parse_args(args)
    backends = ["torch", *(["torch_fused", "torch_fused_cl"] if opts.fused else []),
                *([] if opts.no_onnx else ["onnx"])]
    size, rows = opts.image_size, []
    nets = {**benchmark_nets(opts.num_classes), **(rounding_nets(opts.num_classes) if opts.rounding else {})}
    if opts.only:
        unknown = sorted(set(opts.only) - set(nets))
        if unknown:
            raise SystemExit(f"error: --only {unknown}: no such rows; choose from {sorted(nets)}")
        nets = {name: net for name, net in nets.items() if name in opts.only or name == "mobilenet_v1_1.0"}
    with tempfile.TemporaryDirectory() as tmp:
        for name, net in nets.items():
            net.eval()
            row: dict[str, Any] = {"name": name, "image_size": size, "threads": opts.threads,
                                   "macs": count_macs(net, size),
                                   "channels": list(getattr(net, "channels", []))}
            for column, (variant, nhwc) in torch_columns(net, opts.fused).items():
                row[f"{column}_ms"] = measure_latency_torch(variant, size, opts.threads, opts.warmup, opts.runs,
                                                            channels_last=nhwc)["median_ms"]
            if "onnx" in backends:
                path = export_onnx(net, Path(tmp) / f"{name}.onnx", size)
                row["onnx_ms"] = measure_latency_onnx(path, size, opts.threads, opts.warmup, opts.runs)["median_ms"]
                if opts.profile_ops:
                    row["onnx_ops_ms"] = onnx_op_profile(path, size, opts.threads, opts.warmup, opts.runs)
            if opts.profile_ops:
                row["torch_ops_ms"] = torch_op_profile(net, size, opts.threads, opts.warmup, opts.runs)
            rows.append(row)
    add_ratios(rows, backends, opts.target)
    print(f"{size} px, batch 1, {opts.threads} thread(s), median of {opts.runs} runs; target sp/MACr ≥ {opts.target}")
    print(format_rows(rows, backends))
    if opts.profile_ops:
        print(format_op_shares(rows))
    if opts.out is not None:
        write_json(opts.out, rows)
    return rows


if __name__ == "__main__":
    main()
