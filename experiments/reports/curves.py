"""Learning curves for ``docs/RESULTS.md``: a run's validation accuracy and training loss per epoch (its
``epochs.csv``, written by :class:`~callbacks.epoch_log.EpochLog`), coloured by stage, so that a reader sees
whether the baseline converged before the sweep and the cut, and how the fine-tune went."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from callbacks.epoch_log import read_epochs


def stage_spans(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Consecutive rows of one stage, in epoch order: ``[(stage, rows), ...]``."""
    spans: list[tuple[str, list[dict[str, Any]]]] = []
    for row in sorted(rows, key=lambda r: r["epoch"]):
        if spans and spans[-1][0] == row["stage"]:
            spans[-1][1].append(row)
        else:
            spans.append((row["stage"], [row]))
    return spans


#: A training loss this far above the lowest loss of its stage so far marks an unstable stretch (0.05 = 5 %).
LOSS_RISE: float = 0.05


def loss_rises(rows: list[dict[str, Any]], rise: float = LOSS_RISE) -> list[dict[str, Any]]:
    """Stretches of consecutive epochs whose training loss stands more than ``rise`` (a fraction) above the
    lowest loss of the same stage before them: the optimiser lost ground it had gained (too high a learning
    rate for this seed, a bad batch). One ``{"stage", "first", "last", "before", "peak"}`` per stretch, with
    1-based epochs as the progress line and the plots number them; ``before`` is that lowest loss."""
    stretches: list[dict[str, Any]] = []
    for stage, span in stage_spans(rows):
        best, current = None, None
        for row in span:
            loss = row.get("train_loss")
            if loss is None:
                continue
            if best is not None and loss > best * (1 + rise):
                if current is None:
                    current = {"stage": stage, "first": row["epoch"] + 1, "before": best, "peak": loss}
                    stretches.append(current)
                current["last"], current["peak"] = row["epoch"] + 1, max(current["peak"], loss)
                continue
            current = None
            best = loss if best is None else min(best, loss)
    return stretches


def rise_text(stretch: dict[str, Any]) -> str:
    """``epochs 4–5 of the baseline stage (1.435 → 1.671)``."""
    epochs = (f"epoch {stretch['first']}" if stretch["first"] == stretch["last"]
              else f"epochs {stretch['first']}–{stretch['last']}")
    return f"{epochs} of the {stretch['stage']} stage ({stretch['before']:.3f} → {stretch['peak']:.3f})"


def plot_curves(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Validation accuracy (left) and training loss (right) per epoch (rows of
    :func:`~callbacks.epoch_log.read_epochs`), one colour per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spans = stage_spans(rows)
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for stage, rows in spans:
        epochs = [r["epoch"] + 1 for r in rows]
        acc = [None if r["val_acc"] is None else 100 * r["val_acc"] for r in rows]
        line, = acc_ax.plot(epochs, acc, marker="o", markersize=3, label=stage)
        loss_ax.plot(epochs, [r["train_loss"] for r in rows], marker="o", markersize=3, color=line.get_color())
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("validation accuracy %")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    acc_ax.legend(fontsize=8)
    acc_ax.grid(alpha=0.3)
    loss_ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curve_lines(summaries: list[dict[str, Any]], out: Path) -> list[str]:
    """A RESULTS section with the learning curve of every run that trained a baseline (an ``epochs.csv`` with
    a ``baseline`` stage): whether the baseline converged is what the comparisons rest on."""
    lines: list[str] = []
    for s in summaries:
        folder = Path(s["_path"]).parent
        if not (folder / "epochs.csv").is_file():
            continue
        rows = read_epochs(folder / "epochs.csv")
        if not any(r["stage"] == "baseline" for r in rows):
            continue
        name = folder.name
        figure = out.parent / "figures" / f"curve_{name}.png"
        plot_curves(rows, figure, f"run {name}: {s.get('dataset')} @{s.get('image_size')} px")
        lines += [f"![learning curve {name}]({figure.relative_to(out.parent).as_posix()})", ""]
    if lines:
        lines = ["## Learning curves", "",
                 "Validation accuracy and training loss per epoch from each run's `epochs.csv` (the same values "
                 "are in its W&B run), one colour per stage: the baseline's curve shows whether it converged "
                 "before the sweep and the cut.", "", *lines]
    return lines
