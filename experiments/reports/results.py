"""Generate ``docs/RESULTS.md`` from the ``summary.json`` files of finished runs.

    python experiments/reports/results.py                       # reads logs/, writes docs/RESULTS.md
    python experiments/reports/results.py --runs DIR --out docs/RESULTS.md

Every measured number in the output comes from a summary; the reference numbers of the published
replication of de Leon & Atienza (arXiv:2204.10546) stand beside them, labelled as such.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from experiments.reports.auto_cut import auto_cut_section
from experiments.reports.backbones import MOBILENET_V1, backbone_of, backbone_section
from experiments.reports.combined import combined_section
from experiments.reports.cost import budget_of, cost_figure
from experiments.reports.curves import curve_lines
from experiments.reports.deploy import deployment_sections
from experiments.reports.format import count, kb, minutes, pct, ratio, run_id
from experiments.reports.orderings import ordering_rows, orderings_finding, orderings_section
from experiments.reports.pairing import schedule_span
from experiments.reports.protocol import findings, protocol_section
from experiments.reports.reproduce import (
    BIT_IDENTITY,
    by_seed,
    make_portable,
    memory_format_of,
    portable,
    reproduce_script,
    run_config,
    seed_spread,
)
from experiments.reports.speed import speed_section
from experiments.reports.sweep_check import sweep_check_sections, sweep_checks
from experiments.reports.width import plot_width_rows, width_groups, width_rows, width_table
from experiments.run.arguments import OneLineArgumentParser
from experiments.run.cli import exits_cleanly
from experiments.run.summary_check import incomplete_reason, read_summary
from lightning_modules.backbones import uncut_arch
from lightning_modules.pruning.depth_cut import Baseline, CutPoint, choose_cut

#: Published replication (MobileNetV1, head DS→64/DS→32, cut after block 6): test accuracy in %.
REFERENCE_DEPTH = {
    ("CIFAR10", 224): {"baseline": 89.73, "original": 88.80, "random": 88.68},
    ("Imagenette", 224): {"baseline": 76.50, "original": 81.15, "random": 78.17},
    ("Imagewoof", 224): {"baseline": 55.94, "original": 63.62, "random": 60.04},
}


def load_summaries(root: Path) -> list[dict[str, Any]]:
    """All ``summary.json`` under ``root`` of runs that did their work (newest last), each with its path
    under ``_path``; incomplete ones are skipped with a notice (:func:`incomplete_reason`)."""
    found = []
    for path in sorted(root.rglob("summary.json"), key=lambda p: (p.stat().st_mtime, str(p))):
        summary = read_summary(path)
        if (reason := incomplete_reason(summary)) is not None:  # never shown as a result
            print(f"notice: skipping {path}: {reason}", file=sys.stderr)
            continue
        summary["_path"] = path
        found.append(summary)
    return found


def latest_by(summaries: list[dict], key) -> dict[tuple, dict]:
    """The newest summary for each key (later entries win)."""
    return {key(s): s for s in summaries}


def width_note(summary: dict) -> str:
    """`` + width <method> <sparsity>`` for a depth run with a width stage after the cut."""
    widths = [r for r in summary.get("stages", []) if r.get("stage") == "width"]
    return "".join(f" + width {r.get('method')} {r.get('criterion')} {r.get('sparsity')}" for r in widths)


def layout_note(summary: dict) -> str:
    """Runs trained in NCHW (the layout before NHWC became the default) or with one LR schedule over the
    whole fit (before the per-stage protocol) say so in their row."""
    return (", NCHW" if memory_format_of(summary) == "NCHW" else "") + \
        (", whole-fit" if schedule_span(summary) == "fit" else "")


def baseline_epochs(summary: dict) -> int | None:
    """Epochs of the baseline a per-stage depth run cut (its sweep starts where they end; a random-init run
    from a baseline checkpoint keeps that baseline's ``sweep.start_epoch``): runs from baselines of different
    lengths are different rows."""
    if schedule_span(summary) != "stage":
        return None
    start = (run_config(summary).get("sweep") or {}).get("start_epoch")
    return start if isinstance(start, int) else None


def depth_table(runs: list[dict], groups: dict[int, list[dict]] | None = None) -> list[str]:
    """One row per configuration (the newest run); accuracies as mean and range when ``groups`` holds
    several seeds' runs of that row (keyed by ``id`` of the newest run)."""
    groups = groups or {}
    lines = [
        "| dataset | px | init | cut | epochs | baseline acc % | baseline params | baseline MACs | pruned acc % "
        "| pruned params | pruned MACs | params × | MACs × | flash int8 KB (base → pruned) "
        "| peak RAM int8 KB (base → pruned) | wall min | replication (base → pruned) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in runs:
        base, pruned = s.get("baseline", {}), s.get("pruned", {})
        size = s.get("image_size", 224)
        bb = budget_of(base, s.get("baseline_arch") or uncut_arch(s["arch"]), size)
        pb = budget_of(pruned, s["arch"], size)
        ref = REFERENCE_DEPTH.get((s.get("dataset"), s.get("image_size")), {})
        ref_text = f"{ref['baseline']:.2f} → {ref[s['init']]:.2f}" if ref and s.get("init") in ref else "—"
        seeds = by_seed(groups.get(id(s), [s]))
        base_acc = seed_spread([r.get("baseline", {}).get("acc") for r in seeds])
        pruned_acc = seed_spread([r.get("pruned", {}).get("acc") for r in seeds])
        lines.append(
            f"| {s.get('dataset')} | {s.get('image_size')} | {s.get('init')}{width_note(s)}{layout_note(s)}"
            f"{f', {start}-epoch baseline' if (start := baseline_epochs(s)) is not None else ''} "
            f"| {s.get('chosen_cut')} "
            f"| {s.get('epochs')} | {base_acc} | {count(base.get('params'))} "
            f"| {count(base.get('macs'))} | {pruned_acc} | {count(pruned.get('params'))} "
            f"| {count(pruned.get('macs'))} | {ratio(pruned, base, 'params')} | {ratio(pruned, base, 'macs')} "
            f"| {kb(bb.get('flash_int8'))} → {kb(pb.get('flash_int8'))} "
            f"| {kb(bb.get('peak_ram_int8'))} → {kb(pb.get('peak_ram_int8'))} "
            f"| {minutes(s.get('wall_time_s'))} | {ref_text} |"
        )
    return lines


def automatic_choices(summary: dict, tolerance: float = 0.01) -> str:
    """What the automatic cut rules pick from the sweep rows (same function the pipeline uses)."""
    rows = [CutPoint(**r) for r in summary["sweep"]]
    base = summary["baseline"]
    if base.get("acc") is None:
        return ""
    baseline = Baseline(params=base["params"], macs=base["macs"], acc=base["acc"])
    picks = [f"{rule} → cut {choose_cut(rows, baseline, None, rule, tolerance)[0]}" for rule in ("tolerance", "knee")]
    return f"Automatic rules on this sweep: {', '.join(picks)} (tolerance {100 * tolerance:.0f} point)."


def sweep_table(summary: dict) -> list[str]:
    base = summary["baseline"]
    lines = ["| cut (blocks kept) | params | MACs | aux head val acc % | Δ vs baseline (pp) |", "|---|---|---|---|---|"]
    for row in summary["sweep"]:
        mark = " ← chosen" if row["cut"] == summary.get("chosen_cut") else ""
        delta = "—" if base.get("acc") is None else f"{100 * (row['acc'] - base['acc']):+.2f}"
        lines.append(f"| {row['cut']}{mark} | {row['params']:,} | {row['macs']:,} | {100 * row['acc']:.2f} | {delta} |")
    lines.append(f"| baseline (all 13 blocks) | {count(base.get('params'))} | {count(base.get('macs'))} "
                 f"| {pct(base.get('acc'))} | |")
    return lines


def bench_table(rows: list[dict]) -> list[str]:
    """The latency benchmark written by ``bench_latency.py --out``: one column group per backend measured
    (PyTorch eager, with BatchNorm folded, folded + channels_last, onnxruntime)."""
    first = rows[0]
    names = {"torch": "PyTorch", "torch_fused": "PyTorch, BN folded", "torch_fused_cl": "PyTorch, BN folded, NHWC",
             "onnx": "onnxruntime"}
    backends = [b for b in names if any(r.get(f"{b}_ms") is not None for r in rows)]
    lines = [f"{first['image_size']} px, batch 1, {first['threads']} CPU thread(s); speed-up = unpruned latency / "
             "latency; efficiency = speed-up / MAC ratio (target ≥ 0.8). Rows `sparsity_S_rN`: one-shot pruning "
             "at sparsity S with channel counts rounded to multiples of N.", "",
             "| network | MMACs | MAC ratio | " + " | ".join(f"{names[b]} ms | speed-up | efficiency" for b in backends)
             + " |", "|---|---|---|" + "---|---|---|" * len(backends)]
    for r in rows:
        cells = [f"{r[f'{b}_ms']:.3f} | {r[f'{b}_speedup']:.2f} | {r[f'{b}_efficiency']:.2f}"
                 if r.get(f"{b}_ms") is not None else "— | — | —" for b in backends]
        lines.append(f"| {r['name']} | {r['macs'] / 1e6:.1f} | {r['mac_ratio']:.2f} | " + " | ".join(cells) + " |")
    return lines


def onnx_profile_table(profiles: list[tuple[str, dict]]) -> list[str]:
    """ONNX export and int8 results written by ``profile_model.py --onnx --int8 --out <run>/profile.json``."""
    lines = ["| run | params | fp32 ONNX acc % | int8 ONNX acc % | max abs diff | ONNX fp32 KB | ONNX int8 KB "
             "| flash int8 KB | peak RAM int8 KB | onnxruntime ms (1 thread) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run, p in profiles:
        lines.append(f"| {run} | {p['params']:,} | {pct(p.get('acc_fp32_onnx'))} | {pct(p.get('acc_int8_onnx'))} "
                     f"| {p.get('onnx_max_abs_diff', float('nan')):.1e} | {kb(p.get('onnx_bytes'))} "
                     f"| {kb(p.get('onnx_int8_bytes'))} | {kb(p['flash_int8'])} | {kb(p['peak_ram_int8'])} "
                     f"| {p.get('latency_onnx_ms', float('nan')):.3f} |")
    return lines


def width_section(rows: list[dict], out: Path) -> list[str]:
    """Width-pruning tables per dataset and image size, and their figures."""
    lines: list[str] = []
    if rows:
        lines += ["## Width (channel) pruning", "",
                  "`uv run experiments/width_prune.py --config experiments/configs/width/<scale>/<row>.yaml "
                  "--baseline_ckpt $BASELINE` (`BASELINE` set as in *Runs and how to reproduce them*), one run per "
                  "row of TinyNeuralNetwork's CIFAR-10 tables. "
                  "Sparsity = fraction of channels removed from every prunable layer; acc before = the "
                  "baseline checkpoint, acc after = the best pruned checkpoint, both on the test split; "
                  "epochs = all epochs of the run (method-specific training + fine-tuning). The TinyNN column "
                  "is their 224 px, 220-epoch result, for the shape of the comparison only. Wall time is as measured, "
                  "including any other job sharing the machine.", ""]
        for (dataset, size, baseline, span, epochs), group in width_groups(rows).items():
            run = Path(baseline).parent.parent.name
            protocol = "per-stage protocol" if span == "stage" else "archived whole-fit runs, not evidence"
            acc = group[0].get("acc_before")
            length = "" if epochs is None else f", {epochs}-epoch runs"
            lines += [f"### {dataset} @{size} px — from baseline `{run}` ({pct(acc)} %){length}, {protocol}", "",
                      *width_table(group), ""]
            name = f"width_{str(dataset).lower()}_{size}_{run}{'' if epochs is None else f'_{epochs}ep'}.png"
            figure = plot_width_rows(group, out.parent / "figures" / name)
            if figure is not None:
                lines += [f"![width pruning {dataset} {size} px from {run}]({figure.relative_to(out.parent).as_posix()})", ""]
            if span == "stage":
                lines += orderings_section(group, run, epochs)
    return lines


def width_finding(width: list[dict]) -> list[str]:
    """The Findings rows of the width orderings, from the per-stage CIFAR-10 @32 px width tables: the table
    that runs the most ordering pairs, and of those the best-trained baseline (the highest test accuracy before
    pruning: every such table prunes the same network on the same split), then the shortest runs; so a longer
    baseline's table replaces a shorter one's once it covers as many pairs, however many more seeds the older
    table has. Then one row for each longer table from the same baseline: the same pairs after longer
    fine-tuning, which shows whether an ordering only ranks how fast each method recovers."""
    tables = [(key, group) for key, group in width_groups(width).items()
              if key[0] == "CIFAR10" and key[1] == 32 and key[3] == "stage"]
    if not tables:
        return [orderings_finding([], None)]

    def before(group: list[dict]) -> float:
        return max((float(s["acc_before"]) for s in group if s.get("acc_before") is not None), default=0.0)

    (_, _, baseline, _, epochs), group = max(tables, key=lambda item: (len(ordering_rows(item[1])), before(item[1]),
                                                                       -(item[0][4] or 0)))
    rows = [orderings_finding(group, baseline, before(group) or None, epochs)]
    longer = sorted(((key[4], g) for key, g in tables if key[2] == baseline and (key[4] or 0) > (epochs or 0)
                     and ordering_rows(g)), key=lambda item: item[0])
    for n, g in longer:
        rows.append(orderings_finding(g, baseline, before(g) or None, n,
                                      claim=f"| the same orderings after longer fine-tuning ({n} epochs in all)"))
    return rows


def compute_line(summaries: list[dict]) -> str:
    """The training compute behind the page: the sum of the runs' wall times (each run's own clock)."""
    seconds = [s["wall_time_s"] for s in summaries if s.get("wall_time_s")]
    corrected = [s for s in summaries if s.get("wall_time_correction")]
    line = (f"Compute: the {len(seconds)} runs on this page trained for {sum(seconds) / 3600:.1f} h of wall time "
            "in all (the sum of their `wall_time_s`; benchmarks and deployment checks not included).")
    if corrected:
        lower = sum(bool(s["wall_time_correction"].get("lower_bound")) for s in corrected)
        line += (f" {len(corrected)} summaries were written while the run clock counted a process's time up to its "
                 f"tested checkpoint twice; their `wall_time_s` has that checkpoint's clock subtracted "
                 f"({sum(s['wall_time_s'] for s in corrected) / 3600:.1f} h instead of "
                 f"{sum(s['wall_time_correction']['reported_s'] for s in corrected) / 3600:.1f} h, "
                 "`wall_time_correction` in each)"
                 + (f", and {lower} of them, resumed runs, lack their earlier processes' time: the total is a lower "
                    "bound." if lower else "."))
    return line


def render(summaries: list[dict], out: Path, latency_runs: int = 50) -> str:
    every = summaries
    summaries = [s for s in summaries if backbone_of(s) == MOBILENET_V1]  # timm runs: their own section
    depth = [s for s in summaries if s.get("stage") == "depth_prune"]
    baselines = [s for s in summaries if s.get("stage") == "baseline"]
    # one key per run, computed once (the layout may come from the run's saved config)
    keys = {id(s): (s.get("dataset"), s.get("image_size"), s.get("init"), s.get("chosen_cut"),
                    s.get("baseline_ckpt") is None, len(s.get("stages", [])) > 1, memory_format_of(s),
                    schedule_span(s), baseline_epochs(s)) for s in depth}

    def depth_key(s: dict) -> tuple:
        return keys[id(s)]

    depth_rows = list(latest_by(depth, depth_key).values())
    groups = {id(row): [s for s in depth if depth_key(s) == depth_key(row)] for row in depth_rows}
    width = width_rows(summaries)
    lines = [
        "# Results",
        "",
        "Generated by `python experiments/reports/results.py` from the runs' `summary.json` files — do not edit by hand.",
        "Accuracies are on the test split (CIFAR-10 test, Imagenette/Imagewoof val) with the best checkpoint",
        "of the final network; baseline accuracy is the unpruned network's validation accuracy at the sweep.",
        "MACs: PyTorch's FLOP counter / 2 at the run's image size (batch 1).",
        compute_line(every),
        "",
        *findings(every, sweep_checks(out.parent / "runs"), width_finding(width)),
        "## Depth pruning with auxiliary networks",
        "",
        *protocol_section(summaries),
        *auto_cut_section(summaries),
        *sweep_check_sections(out.parent / "runs"),
        "### Every depth run",
        "",
        "One row per configuration. Rows marked *whole-fit* were run before the per-stage protocol: their "
        "baseline accuracy is read mid-schedule (the LR schedule spanned the whole fit), so their baseline → "
        "pruned difference mixes pruning with schedule; they stay for reproducibility, not as evidence.",
        "",
        *depth_table(depth_rows, groups),
        "",
        "Accuracies with several seeds' runs read `mean (min–max, n seeds)`; what is and is not "
        "bit-identical across machines: see *Runs and how to reproduce them*.",
        "",
    ]
    lines += width_section(width, out)
    lines += combined_section(depth)
    lines += curve_lines(summaries, out)
    lines += cost_figure(depth_rows, baselines, out, latency_runs)
    for s in depth_rows:
        if not s.get("sweep") or len(s.get("stages", [])) > 1:  # depth + width runs: their own section
            continue
        title = f"{s['dataset']} @{s['image_size']} px{layout_note(s)}"
        lines += [f"### Cut-point sweep — {title} (run {Path(s['_path']).parent.name})", "",
                  f"One sweep stage ({len(s['sweep'])} heads trained at once on the frozen baseline). "
                  f"Chosen: {s.get('cut_reason')}", "", automatic_choices(s), "", *sweep_table(s), ""]
        png = Path(s["_path"]).parent / "depth_sweep.png"
        if png.is_file():
            # one file per run: several runs of one dataset and size each have a sweep section
            figure = out.parent / "figures" / f"depth_sweep_{s['dataset'].lower()}_{s['image_size']}_{run_id(s)}.png"
            figure.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, figure)
            lines += [f"![sweep {title}]({figure.relative_to(out.parent).as_posix()})", ""]
    if baselines:
        lines += ["## Baselines", "",
                  "| dataset | px | epochs | test acc % | params | MACs | train img/s | wall min |",
                  "|---|---|---|---|---|---|---|---|"]
        def baseline_key(s: dict) -> tuple:
            return Path(s["data_root"]).name, s["image_size"], s["epochs"]

        for s in latest_by(baselines, baseline_key).values():
            seeds = by_seed([b for b in baselines if baseline_key(b) == baseline_key(s)])
            lines.append(f"| {Path(s['data_root']).name} | {s['image_size']} | {s['epochs']} "
                         f"| {seed_spread([b['metrics'].get('test/acc') for b in seeds])} | {s['params']:,} | {s['macs']:,} "
                         f"| {s['metrics'].get('train/img_per_s', float('nan')):.0f} | {minutes(s.get('wall_time_s'))} |")
        lines.append("")
    profiles = [(Path(s["_path"]).parent.name, json.loads((Path(s["_path"]).parent / "profile.json").read_text()))
                for s in summaries if (Path(s["_path"]).parent / "profile.json").is_file()]
    if profiles:
        lines += ["## Deployment: ONNX and int8", "",
                  "`uv run experiments/bench/profile_model.py --ckpt <best checkpoint> --image_size 32 --latency --onnx "
                  "m.onnx --int8 --out <run>/profile.json` (int8: onnxruntime static quantisation, calibrated on "
                  "512 training images, evaluated on the test split).", "", *onnx_profile_table(profiles), ""]
    for bench in sorted((out.parent / "runs").glob("bench_latency*.json")):
        lines += [f"## Latency benchmark ({bench.stem})", "",
                  f"`uv run experiments/bench/latency.py --image_size 224 --threads 1 --runs 20 --fused --rounding --out {out.parent.name}/runs/{bench.name}`", "",
                  *bench_table(json.loads(bench.read_text())), ""]
    lines += speed_section(out.parent / "runs")

    lines += deployment_sections(out.parent / "runs")

    lines += backbone_section(every)
    lines += ["## Runs and how to reproduce them", "",
              "From a fresh clone (data in `../shared/data`, see README), in this order: each run's folder is "
              "fixed by its id, so the baseline checkpoint a later run starts from is set by the line after "
              "the command that writes it. Each archived `config.yaml` is the run's resolved configuration.", "",
              *reproduce_script(every, f"{out.parent.name}/runs"), "", BIT_IDENTITY, ""]
    lines.append("")
    return portable("\n".join(lines))  # no path of this machine in the page


ARCHIVED_FILES = ("summary.json", "config.yaml", "epochs.csv", "profile.json", "depth_sweep.csv", "depth_sweep.json", "depth_sweep.png",
                  "fit_budget.png")


def archive_runs(summaries: list[dict], archive: Path) -> None:
    """Copy each run's small artifacts to ``archive/<run id>/`` (kept in the repository, unlike logs/),
    so that ``results.py --runs docs/runs`` regenerates the page in any clone."""
    for s in summaries:
        folder = Path(s["_path"]).parent
        target = archive / folder.name
        if folder.resolve() != target.resolve():
            target.mkdir(parents=True, exist_ok=True)
            for name in ARCHIVED_FILES:
                if (folder / name).is_file():
                    shutil.copyfile(folder / name, target / name)
        make_portable(target)


@exits_cleanly
def main(args: list[str] | None = None) -> Path:
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, nargs="+", default=[Path("logs"), Path("docs/runs")],
                        help="folders searched for summary.json (a run found twice counts once: its newest summary)")
    parser.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"))
    parser.add_argument("--latency_runs", type=int, default=50,
                        help="timed runs per network for the latency plot (0: no latency)")
    opts = parser.parse_args(args)
    found = [s for root in opts.runs if root.is_dir() for s in load_summaries(root)]
    found.sort(key=lambda s: Path(s["_path"]).stat().st_mtime)  # a run found twice: its newest summary wins
    summaries = list({Path(s["_path"]).parent.name: s for s in found}.values())  # one entry per run id
    if not summaries:
        raise SystemExit(f"error: no summary.json under {', '.join(map(str, opts.runs))}; run an experiment first")
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    archive_runs(summaries, opts.out.parent / "runs")
    opts.out.write_text(render(summaries, opts.out, opts.latency_runs))
    print(f"Wrote {opts.out} from {len(summaries)} run(s)")
    return opts.out


if __name__ == "__main__":
    main()
