"""Fit the instruction-count model of :mod:`lightning_modules.deploy.mcu_cost` on emulated firmware, and
hold it to networks the fit never saw.

    uv run experiments/bench/fit_mcu_cost.py                       # cortex-m4, every network
    uv run experiments/bench/fit_mcu_cost.py --arch cortex-m7 --out outputs/mcu_cost/m7.json

Every network of :data:`NETS` (random weights with trained-like BatchNorm statistics: the instruction
count hardly depends on the weights' values, only a few reference kernels branch on them) is exported fully int8 as the deployment does
(:func:`~lightning_modules.deploy.tflite.export_int8_tflite`, two random calibration images), bundled,
built for ``--arch`` against TFLM + CMSIS-NN and run in QEMU twice: as deployed (the instructions of one
inference, the figure to predict), and built with ``TINYML_OP_MARKERS`` (the instructions of each op's
kernel apart). Conversions and counts are kept in ``--work`` (``NAME.tflite``, ``NAME.ARCH.json``) and
reused; a conversion takes minutes on two busy cores. Another core first builds its TFLM library (once,
8-14 min).

The fit: non-negative least squares (Lawson & Hanson, *Solving Least Squares Problems*, 1974, ch. 23) of
each op's count on its work terms (:func:`~lightning_modules.deploy.mcu_cost.op_terms`, on the graph
predicted from the PyTorch network, as a prediction sees it), each op row weighted by 1 / its network's
instructions so that every network counts alike; then the per-op and fixed terms on what the
interpreter adds around the kernels (the inference's count less the ops' counts). It prints the table to
paste into ``COEFFICIENTS``, for every network the measured count, the prediction and the error, and per
op kind (all networks, op by op) the measured and predicted instructions.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from experiments.run.arguments import OneLineArgumentParser
from experiments.run.checkpoint_io import write_json
from experiments.run.cli import exits_cleanly
from lightning_modules.backbones.base import trained_like_batchnorm
from lightning_modules.backbones.timm import timm_network
from lightning_modules.deploy.mcu_cost import GRAPH_TERMS, feature_names, op_features, op_terms
from lightning_modules.deploy.tflm_estimate import PredictedGraph, network_graph
from lightning_modules.models.mobilenet_v1 import BASE_CHANNELS, MobileNetV1
from lightning_modules.pruning.width import keep_count

#: Odd widths (stem + 5 blocks), as the TFLM arena grid has them.
ODD = [7, 13, 21, 19, 37, 45]


@dataclass(frozen=True)
class NetSpec:
    """A network of the fit or of the held-out set, and its input size."""

    build: Callable[[], nn.Module]
    image_size: int
    held_out: bool = False


def mnv1(width: float = 1.0, blocks: int = 13, **kw: Any) -> Callable[[], nn.Module]:
    """A MobileNetV1 builder: ``width``, the first ``blocks`` blocks (a cut gets the (64, 32) head)."""
    head = (64, 32) if blocks < 13 else ()
    return lambda: MobileNetV1(num_classes=10, width_mult=width, num_blocks=blocks, head_channels=head, **kw)


def pruned(sparsity: float, blocks: int = 13) -> Callable[[], nn.Module]:
    """MobileNetV1-1.0 with every layer's channels cut by ``sparsity``, not rounded (one-shot pruning)."""
    return mnv1(blocks=blocks, channels=[keep_count(c, sparsity, 1) for c in BASE_CHANNELS])


def timm_net(name: str, cut: int | None = None) -> Callable[[], nn.Module]:
    """A timm network builder, whole or cut after cut point ``cut`` with a fresh head."""
    return functools.partial(timm_network, name, 10, cut)


NETS: dict[str, NetSpec] = {
    # the fit: MobileNetV1 widths 0.25 / 0.5 / 1.0, 32-96 px, cuts, odd widths and map sizes (the kernels'
    # leftover paths); one net of each timm family
    "mnv1_w0.25_32px": NetSpec(mnv1(0.25), 32),
    "mnv1_w0.5_64px": NetSpec(mnv1(0.5), 64),
    "mnv1_w0.25_96px": NetSpec(mnv1(0.25), 96),
    "mnv1_w1.0_cut3_32px": NetSpec(mnv1(1.0, 3), 32),
    "mnv1_w0.5_cut6_32px": NetSpec(mnv1(0.5, 6), 32),
    "mnv1_odd_channels_42px": NetSpec(mnv1(channels=ODD, blocks=5), 42),  # odd maps: 21, 11, 6, 3 px
    "mobilenetv3_small_050_32px": NetSpec(timm_net("mobilenetv3_small_050"), 32),
    "efficientnet_b0_cut4_32px": NetSpec(timm_net("efficientnet_b0", 4), 32),
    "resnet10t_cut2_40px": NetSpec(timm_net("resnet10t", 2), 40),  # 10 and 5 px maps
    # held out: another width, size and cut, one-shot-pruned widths, other cuts of the timm families
    "mnv1_w0.35_48px": NetSpec(mnv1(0.35), 48, held_out=True),
    "mnv1_w0.75_cut10_48px": NetSpec(mnv1(0.75, 10), 48, held_out=True),
    "mnv1_pruned0.65_32px": NetSpec(pruned(0.65), 32, held_out=True),
    "mobilenetv3_small_050_cut4_64px": NetSpec(timm_net("mobilenetv3_small_050", 4), 64, held_out=True),
    "efficientnet_b0_cut6_32px": NetSpec(timm_net("efficientnet_b0", 6), 32, held_out=True),
    "resnet10t_cut3_32px": NetSpec(timm_net("resnet10t", 3), 32, held_out=True),  # (whole: 5 MB, over flash)
    "mnv1_pruned0.6_cut4_32px": NetSpec(pruned(0.6, 4), 32, held_out=True),  # tests/test_mcu_cost.py's
}


def built(spec: NetSpec) -> nn.Module:
    """The network of ``spec``, seeded, with trained-like statistics, in eval mode."""
    torch.manual_seed(0)
    return trained_like_batchnorm(spec.build())


def build_net(name: str) -> nn.Module:
    """Network ``name`` of :data:`NETS` (:func:`built`)."""
    return built(NETS[name])


def converted(spec: NetSpec, path: Path) -> Path:
    """``path``: the network of ``spec`` exported fully int8 as the deployment exports it (two random
    calibration images), converted once and then reused."""
    if not path.is_file():
        from lightning_modules.deploy.tflite import export_int8_tflite

        size = spec.image_size
        calibration = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        export_int8_tflite(built(spec), path, calibration, size)
    return path


def measure(name: str, arch: str, work: Path, timeout_s: float = 600.0) -> dict[str, Any]:
    """Convert, bundle, build and emulate ``name`` (or read the counts kept in ``work``): the deployed
    firmware's instructions, each op's instructions (op-marker build) and the ``.tflite``'s op names."""
    record_path = work / f"{name}.{arch}.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    from lightning_modules.deploy import cortexm
    from lightning_modules.deploy.firmware import write_bundle
    from lightning_modules.deploy.tflm_plan import read_graph

    spec = NETS[name]
    tflite = converted(spec, work / f"{name}.tflite")
    bundle = work / f"{name}.bundle"
    write_bundle(tflite, bundle)
    library = cortexm.tflm_library(arch)
    deployed = cortexm.run_firmware(cortexm.build_firmware(bundle, library), arch, timeout_s=timeout_s)
    marked = cortexm.build_firmware(bundle, library, bundle / f"build-{arch}-ops", defines=("TINYML_OP_MARKERS",))
    per_op = cortexm.run_firmware(marked, arch, timeout_s=timeout_s, markers=cortexm.OP_MARKERS)
    _, ops, _ = read_graph(tflite)
    record = {"net": name, "arch": arch, "image_size": spec.image_size, "instructions": deployed["instructions"],
              "op_counts": per_op["counts"], "ops": ops, "host_output": deployed.get("host_output"),
              "library_bundle_sha256": library.bundle_sha256}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def nnls(a: np.ndarray, b: np.ndarray, tol: float = 1e-10, max_iter: int = 1000) -> np.ndarray:
    """``argmin ‖a x − b‖`` subject to ``x ≥ 0``: Lawson and Hanson's active-set method."""
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = a.T @ (b - a @ x)
    for _ in range(max_iter):
        if passive.all() or w[~passive].max(initial=-np.inf) <= tol * max(1.0, np.abs(w).max()):
            break
        passive[np.argmax(np.where(passive, -np.inf, w))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            shrink = passive & (z <= 0)
            alpha = np.min(x[shrink] / (x[shrink] - z[shrink]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
        w = a.T @ (b - a @ x)
    return x


@functools.cache
def predicted_graph(name: str) -> PredictedGraph:
    """The TFLite graph predicted from the PyTorch network (what a prediction sees)."""
    return network_graph(build_net(name), NETS[name].image_size)


def op_rows(name: str, record: dict[str, Any]) -> list[tuple[dict[str, float], float]]:
    """(work terms, measured instructions) of each op, the predicted graph's ops matched to the
    ``.tflite``'s in execution order."""
    graph = predicted_graph(name)
    predicted = [op.kind for op in graph.plan.ops]
    if predicted != record["ops"] or len(record["op_counts"]) != len(predicted):
        raise ValueError(f"{name}: the predicted graph's ops {predicted} are not the .tflite's {record['ops']} "
                         f"({len(record['op_counts'])} op counts)")
    return [(op_terms(op), float(n)) for op, n in zip(graph.plan.ops, record["op_counts"], strict=True)]


def fit(records: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The coefficient table from the fit networks' op rows and inference counts."""
    rows, targets, weights = [], [], []
    for name, record in records.items():
        for terms, count in op_rows(name, record):
            rows.append(terms)
            targets.append(count)
            weights.append(1.0 / record["instructions"])
    names = feature_names(rows)
    a = np.array([[r.get(t, 0.0) for t in names] for r in rows]) * np.array(weights)[:, None]
    seen = np.abs(a).max(axis=0) > 0  # a term no fit network has stays out of the table
    a, names = a[:, seen], [t for t, s in zip(names, seen, strict=True) if s]
    scale = np.abs(a).max(axis=0)  # columns of unit size, for a well-conditioned solve
    x = nnls(a / scale, np.array(targets) * np.array(weights)) / scale
    table = {t: float(v) for t, v in zip(names, x, strict=True)}
    # what the interpreter adds around the kernels: per op and per inference
    extra = np.array([r["instructions"] - sum(r["op_counts"]) for r in records.values()], dtype=float)
    g = np.array([[len(r["ops"]), 1.0] for r in records.values()])
    table.update(zip(GRAPH_TERMS, map(float, nnls(g, extra)), strict=True))
    return table


def evaluate(name: str, record: dict[str, Any], table: dict[str, float]) -> dict[str, Any]:
    """Measured and predicted instructions of one network (the prediction from the PyTorch network)."""
    features = op_features(predicted_graph(name))
    row = {"net": name, "held_out": NETS[name].held_out, "instructions": record["instructions"]}
    missing = sorted(t for t, v in features.items() if v and t not in table)
    if missing:  # an op or path no fit network has
        return {**row, "predicted": None, "error": math.nan, "missing_terms": missing}
    predicted = sum(v * table.get(t, 0.0) for t, v in features.items())
    return {**row, "predicted": int(round(predicted)), "error": predicted / record["instructions"] - 1}


def kind_errors(records: dict[str, dict[str, Any]], table: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per op kind over ``records``: instructions measured op by op, predicted, and the relative error."""
    totals: dict[str, list[float]] = {}
    for name, record in records.items():
        for terms, count in op_rows(name, record):
            kind = next(iter(terms)).split(":")[0]
            pair = totals.setdefault(kind, [0.0, 0.0])
            pair[0] += count
            pair[1] += sum(v * table.get(t, math.nan) for t, v in terms.items() if v)
    return {k: {"measured": m, "predicted": p, "error": p / m - 1} for k, (m, p) in sorted(totals.items())}


def build_parser() -> OneLineArgumentParser:
    """The command line."""
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="cortex-m4", choices=["cortex-m4", "cortex-m7", "cortex-m3"])
    parser.add_argument("--work", default="outputs/mcu_cost", help="conversions and counts, kept and reused")
    parser.add_argument("--nets", nargs="*", default=None, help="only these networks (names of NETS)")
    parser.add_argument("--timeout_s", type=float, default=600.0, help="limit of one emulated run")
    parser.add_argument("--out", default=None, help="write the table and every network's error as JSON here")
    return parser


@exits_cleanly
def main(args: list[str] | None = None) -> dict[str, Any]:
    """Measure (or read) every network, fit on the fit set, print and return the table and the errors."""
    opts = build_parser().parse_args(args)
    names = opts.nets or list(NETS)
    unknown = sorted(set(names) - set(NETS))
    if unknown:
        raise SystemExit(f"error: unknown networks {unknown}; known: {', '.join(NETS)}")
    work = Path(opts.work)
    work.mkdir(parents=True, exist_ok=True)
    records = {}
    for name in names:
        records[name] = measure(name, opts.arch, work, opts.timeout_s)
        print(f"measured {name}: {records[name]['instructions']:,} instructions, {len(records[name]['ops'])} ops",
              flush=True)
    fit_set = {n: r for n, r in records.items() if not NETS[n].held_out}
    if not fit_set:
        raise SystemExit("error: no network of the fit set among --nets")
    table = fit(fit_set)
    results = [evaluate(n, r, table) for n, r in records.items()]
    print(f"\nCOEFFICIENTS[{opts.arch!r}] = {{")
    for term, value in table.items():
        print(f"    {term!r}: {value:.6g},")
    print("}\n")
    for role, held in (("fit", False), ("held out", True)):
        rows = [r for r in results if r["held_out"] == held]
        for r in rows:
            if r["predicted"] is None:
                print(f"{role:9s} {r['net']:34s} measured {r['instructions']:>12,}  no coefficient for "
                      f"{', '.join(r['missing_terms'])}")
                continue
            print(f"{role:9s} {r['net']:34s} measured {r['instructions']:>12,}  predicted {r['predicted']:>12,}  "
                  f"error {r['error']:+.2%}")
        errors = [abs(r["error"]) for r in rows if r["predicted"] is not None]
        if errors:
            print(f"{role:9s} max |error| {max(errors):.2%}, mean |error| {sum(errors) / len(errors):.2%}\n")
    kinds = kind_errors(records, table)
    for kind, k in kinds.items():
        print(f"op kind   {kind:34s} measured {k['measured']:>12,.0f}  predicted {k['predicted']:>12,.0f}  "
              f"error {k['error']:+.2%}")
    report = {"arch": opts.arch, "coefficients": table, "nets": results, "op_kinds": kinds,
              "command": "uv run experiments/bench/fit_mcu_cost.py " + " ".join(sys.argv[1:] if args is None else args)}
    if opts.out:
        write_json(opts.out, report)
    return report


if __name__ == "__main__":
    main()
