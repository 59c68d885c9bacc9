"""Where inference time goes: per-op-type latency of a network in onnxruntime (its built-in profiler) and
in PyTorch (``torch.profiler``), batch 1 on a fixed number of CPU threads."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn


def onnx_op_profile(onnx_path: str | Path, image_size: int, threads: int = 1, warmup: int = 5, runs: int = 20,
                    in_chans: int = 3) -> dict[str, float]:
    """Mean milliseconds per inference spent in each onnxruntime op type (``Conv``, ``Gemm``, …; the
    optimised graph's kernels, e.g. fused ``Conv`` + ``Relu``), from onnxruntime's own profiler."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name:
                np.random.default_rng(0).standard_normal((1, in_chans, image_size, image_size), dtype=np.float32)}
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_run: dict[str, list[float]] = defaultdict(list)
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    for e in nodes:
        per_run[e["args"]["op_name"]].append(e["dur"] / 1e3)
    n_runs = warmup + runs
    # each op type's total over all runs, minus the warm-up share, per timed run
    return {op: float(sum(times[len(times) * warmup // n_runs:]) / runs) for op, times in sorted(per_run.items())}


@torch.no_grad()
def torch_op_profile(model: nn.Module, image_size: int, threads: int = 1, warmup: int = 5, runs: int = 20,
                     in_chans: int = 3) -> dict[str, float]:
    """Mean milliseconds per inference of each ATen op (self CPU time) under ``torch.inference_mode``."""
    from torch.profiler import ProfilerActivity, profile

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = model.eval()
    x = torch.randn(1, in_chans, image_size, image_size)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(runs):
                    model(x)
    finally:
        torch.set_num_threads(previous)
    return {e.key: e.self_cpu_time_total / 1e3 / runs for e in prof.key_averages() if e.self_cpu_time_total > 0}
