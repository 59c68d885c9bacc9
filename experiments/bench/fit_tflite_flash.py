"""Fit the flatbuffer overhead of :data:`lightning_modules.deploy.tflite_flash.FLASH_BYTES` on converted
networks, and hold it to networks the fit never saw.

    uv run --extra tflite experiments/bench/fit_tflite_flash.py        # conversions kept in outputs/mcu_cost

The networks are :data:`experiments.bench.fit_mcu_cost.NETS` (the instruction-count fit's set, none of
them a case of ``tests/test_tflm_plan.py``'s grid), exported fully int8 as the deployment exports them;
the conversions are shared with that fit (``--work``).

A ``.tflite`` is the constants, their per-channel quantisation parameters, and a table entry per tensor:
shape, type, buffer and **name**. The converter names a tensor after the TensorFlow ops fused into it, so
a convolution's name (``…/convolution;…/BiasAdd;…/Relu``, 60-90 characters) is twice a squeeze-excite
multiply's. The fit measures the mean stored name (length prefix, characters, terminator, padded to 4 B)
per producing op kind on the fit networks; then the per-tensor and fixed bytes by least squares on what
is left (file − constants and their 16-byte alignment − quantisation parameters − names), each network weighted by 1 / its size
so that the small ones (a few KB, mostly tables and names) count as much as the large ones. It prints the table to paste into
``FLASH_BYTES`` / ``NAME_BYTES`` and every network's error.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from experiments.bench.fit_mcu_cost import NETS as MCU_NETS
from experiments.bench.fit_mcu_cost import NetSpec, built, converted, mnv1
from experiments.run.arguments import OneLineArgumentParser
from experiments.run.checkpoint_io import write_json
from experiments.run.cli import exits_cleanly
from lightning_modules.deploy.tflite_flash import (
    FLASH_BYTES,
    buffer_padding,
    predicted_flash,
    stored_name_bytes,
    tensor_kinds,
)
from lightning_modules.deploy.tflm_estimate import PredictedGraph, network_graph
from lightning_modules.models.mobilenet_v1 import MobileNetV1

#: The instruction-count fit's networks, and small ones (a few KB, where the fixed bytes and the names are
#: most of the file): none of them a case of the test grid.
NETS: dict[str, NetSpec] = {
    **MCU_NETS,
    "mnv1_w0.25_2blocks_24px": NetSpec(mnv1(0.25, 2), 24),
    "mnv1_w0.5_1block_40px": NetSpec(lambda: MobileNetV1(num_classes=10, width_mult=0.5, num_blocks=1), 40),
    "mnv1_w0.35_3blocks_28px": NetSpec(lambda: MobileNetV1(num_classes=10, width_mult=0.35, num_blocks=3), 28,
                                       held_out=True),
}


def measured_names(path: Path) -> dict[str, list[int]]:
    """Stored bytes of every tensor name of a ``.tflite``, by the kind of the op writing the tensor
    (``const`` for a tensor with data, ``input`` for the graph's input)."""
    from lightning_modules.deploy.tflite_file import builtin_names, parse_model

    model = parse_model(path)
    graph = model.subgraphs[0]
    producer = {o: kind for op, kind in zip(graph.operators, builtin_names(model), strict=True) for o in op.outputs}
    names: dict[str, list[int]] = defaultdict(list)
    for i, tensor in enumerate(graph.tensors):
        kind = producer.get(i) or ("input" if i in list(graph.inputs) else "const")
        names[kind].append(stored_name_bytes(len(tensor.name)))
    return names


def overhead(graph: PredictedGraph, file_bytes: int) -> float:
    """File bytes less constants (with their buffers' alignment) and their per-channel parameters: the
    tables, names and header."""
    activations = len(graph.plan.tensor_bytes)
    return file_bytes - graph.const_bytes - sum(map(buffer_padding, graph.const_buffers)) \
        - FLASH_BYTES["per_channel"] * (graph.quant_channels + activations)


def fit(graphs: dict[str, PredictedGraph], files: dict[str, Path]) -> tuple[dict[str, float], dict[str, float]]:
    """(``FLASH_BYTES``, ``NAME_BYTES``) from the fit networks."""
    pooled: dict[str, list[int]] = defaultdict(list)
    for path in files.values():
        for kind, sizes in measured_names(path).items():
            pooled[kind] += sizes
    activation = [b for k, v in pooled.items() if k not in ("const", "input") for b in v]
    names = {k: float(np.mean(v)) for k, v in sorted(pooled.items())} | {"other": float(np.mean(activation))}
    a, b = [], []
    for net, graph in graphs.items():
        size = files[net].stat().st_size
        name_bytes = sum(names.get(k, names["other"]) for k in tensor_kinds(graph))
        weight = 1.0 / size  # relative error: a 7 KB network counts as much as a 1 MB one
        a.append([weight * len(graph.plan.tensor_bytes), weight * graph.const_tensors, weight])
        b.append(weight * (overhead(graph, size) - name_bytes))
    (activation, const, fixed), *_ = np.linalg.lstsq(np.array(a), np.array(b), rcond=None)
    table = {"activation_tensor": activation, "const_tensor": const, "fixed": fixed}
    return {**FLASH_BYTES, **{k: round(float(v), 2) for k, v in table.items()}}, \
        {k: round(v, 1) for k, v in names.items()}


def build_parser() -> OneLineArgumentParser:
    """The command line."""
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("--work", default="outputs/mcu_cost", help="conversions, kept and reused")
    parser.add_argument("--out", default=None, help="write the tables and every network's error as JSON here")
    return parser


@exits_cleanly
def main(args: list[str] | None = None) -> dict[str, Any]:
    """Convert (or read) every network, fit on the fit set, print and return the tables and the errors."""
    opts = build_parser().parse_args(args)
    work = Path(opts.work)
    files = {n: converted(spec, work / f"{n}.tflite") for n, spec in NETS.items()}
    graphs = {n: network_graph(built(spec), spec.image_size) for n, spec in NETS.items()}
    flash, names = fit({n: g for n, g in graphs.items() if not NETS[n].held_out},
                       {n: f for n, f in files.items() if not NETS[n].held_out})
    print("FLASH_BYTES", flash)
    print("NAME_BYTES", names)
    rows = []
    for n, graph in graphs.items():
        size = files[n].stat().st_size
        now = predicted_flash(graph)
        new = predicted_flash(graph, flash, names)
        rows.append({"net": n, "held_out": NETS[n].held_out, "bytes": size, "predicted": new,
                     "error": new / size - 1, "error_with_current_tables": now / size - 1})
        print(f"{n:34s} {'held out' if NETS[n].held_out else 'fit':8s} {size:9d} B  predicted {new:9d} "
              f"({new / size - 1:+.2%}; with the tables in tflite_flash now {now / size - 1:+.2%})")
    result = {"FLASH_BYTES": flash, "NAME_BYTES": names, "nets": rows}
    if opts.out:
        write_json(opts.out, result)
    return result


if __name__ == "__main__":
    main()
