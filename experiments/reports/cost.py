"""The accuracy-against-cost figure of ``docs/RESULTS.md``, for ``results.py``: one point per network (each
depth run's unpruned baseline and pruned net, each ``train.py`` baseline) against params, MACs, peak RAM and
batch-1 CPU latency, the latency measured in this one process so that the points compare."""

from __future__ import annotations

from pathlib import Path

from lightning_modules.backbones import build_net, uncut_arch
from lightning_modules.deploy.profiling import measure_latency_torch, tinyml_budget


def budget_of(entry: dict, arch: dict | None, image_size: int) -> dict:
    """A run's TinyML budget: the stored one, else computed from its architecture (it depends on nothing else)."""
    if entry.get("budget"):
        return entry["budget"]
    if arch is None:
        return {}
    return tinyml_budget(build_net(arch), image_size)


COST_AXES = (("params", "parameters"), ("macs", "MACs"), ("peak_ram_int8", "peak RAM int8 (bytes)"),
             ("latency_torch_ms", "CPU latency (ms)"))


def with_latency(budget: dict, arch: dict, image_size: int, runs: int = 50) -> dict:
    """Add the batch-1, 1-thread PyTorch CPU latency, measured now for every network in this one process
    (so the points are comparable with each other), unless the run already carries one."""
    if runs <= 0 or "latency_torch_ms" in budget:
        return budget
    timing = measure_latency_torch(build_net(arch).eval(), image_size, threads=1, runs=runs)
    return {**budget, "latency_torch_ms": timing["median_ms"]}


def run_points(depth_rows: list[dict], latency_runs: int = 50) -> list[dict]:
    """One point per network: each depth run gives its unpruned baseline and its pruned net."""
    points = []
    for s in depth_rows:
        size = s.get("image_size", 224)
        base, pruned = s.get("baseline", {}), s.get("pruned", {})
        tag = f"{s.get('dataset')} @{size}"
        if base.get("acc") is not None:
            arch = uncut_arch(s["arch"])
            points.append({"method": f"baseline at the sweep — {tag}", "acc": base["acc"],
                           **with_latency(budget_of(base, arch, size), arch, size, latency_runs)})
        if pruned.get("acc") is not None:
            points.append({"method": f"depth cut@{s.get('chosen_cut')} {s.get('init')} — {tag}",
                           "acc": pruned["acc"],
                           **with_latency(budget_of(pruned, s["arch"], size), s["arch"], size, latency_runs)})
    return points


def baseline_points(baselines: list[dict], latency_runs: int = 50) -> list[dict]:
    """One point per ``train.py`` baseline that was tested."""
    return [
        {"method": f"baseline {s['epochs']} epochs (train.py) — {Path(s['data_root']).name.split('-')[0]} "
                   f"@{s['image_size']}", "acc": s["metrics"]["test/acc"],
         **with_latency(budget_of(s, s["arch"], s["image_size"]), s["arch"], s["image_size"], latency_runs)}
        for s in baselines if "test/acc" in s.get("metrics", {})
    ]


def plot_accuracy_vs_cost(points: list[dict], path: Path) -> Path | None:
    """Accuracy against params, MACs, peak RAM and (where measured) latency; one colour per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    axes_used = [(k, label) for k, label in COST_AXES if any(p.get(k) for p in points)]
    if not points or not axes_used:
        return None
    fig = Figure(figsize=(4.2 * len(axes_used), 4.0), constrained_layout=True)
    FigureCanvasAgg(fig)
    methods = sorted({p["method"] for p in points})
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for i, (key, label) in enumerate(axes_used):
        ax = fig.add_subplot(1, len(axes_used), i + 1)
        for p in points:
            if p.get(key):
                ax.scatter(p[key], 100 * p["acc"], color=colours[p["method"]], s=40,
                           label=p["method"] if i == 0 else None)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(len(methods), 3), fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def cost_figure(depth_rows: list[dict], baselines: list[dict], out: Path, latency_runs: int = 50) -> list[str]:
    """Draw the figure of every depth run and baseline into ``figures/`` beside the page ``out``; the
    page's lines linking it (none when there is no point to draw)."""
    points = run_points(depth_rows, latency_runs) + baseline_points(baselines, latency_runs)
    figure = plot_accuracy_vs_cost(points, out.parent / "figures" / "accuracy_vs_cost.png")
    if figure is None:
        return []
    return [f"![accuracy vs cost]({figure.relative_to(out.parent).as_posix()})", ""]
