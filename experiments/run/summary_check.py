"""Which ``summary.json`` files describe finished work: the report generators read only those.

Runs since the stop-condition checks never write a summary for work they did not do; summaries written
before them (or by hand) may still say a run pruned when it never did, which :func:`incomplete_reason`
finds from the summary alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["incomplete_reason", "read_summary"]


def read_summary(path: Path) -> dict[str, Any]:
    """The summary at ``path``; ``SystemExit`` with one line naming the file if it is not a JSON object."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: cannot read {path}: {err}; the file is truncated or not a summary.json, "
                         f"delete it or write its run again") from err
    if not isinstance(summary, dict):
        raise SystemExit(f"error: {path} holds a JSON {type(summary).__name__}, not a run summary; delete it")
    return summary


def incomplete_reason(summary: dict[str, Any]) -> str | None:
    """Why the run of ``summary`` did not do its work (``None``: it did)."""
    if summary.get("complete") is False:
        return "marked incomplete"
    if not summary.get("global_step", 1) or summary.get("epochs") == 0:
        return "it trained nothing"
    stage = summary.get("stage")
    widths = summary.get("width")
    widths = widths if isinstance(widths, list) else [widths] if isinstance(widths, dict) else []
    if stage == "depth_prune" and summary.get("chosen_cut") is None:
        return "its depth cut never happened (chosen_cut is null)"
    if stage == "depth_prune" and "sweep" in summary and not summary["sweep"] and summary.get("cut_reason") is None:
        return "its sweep never happened"
    undone = [w.get("method", "?") for w in widths if isinstance(w, dict) and w.get("done") is False]
    if undone:
        return f"its width stage ({', '.join(undone)}) never finished (done: false)"
    return None
