"""What `pmerge front` writes: front.json (every point), front.md (tables) and front.png (plots).

All three are written atomically (temporary sibling, fsync, rename): a reader never sees half a file.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from itertools import combinations
from pathlib import Path
from typing import Any, Optional

from models_store.atomic import atomic_file, write_text
from models_store.family import now_iso
from models_store.fronts import FrontPoint as StoredPoint
from models_store.fronts import StoredFront
from models_store.fronts import write_front as write_stored_front
from models_store.preference import Preference

from .evaluate import markdown_table, with_average
from .front import FAMILY, MEMBERS, FrontPoint, FrontReport

FRONT_FORMAT = 1
MARKERS = {FAMILY: "o", "ta-pref": "s", "adamerging-pref": "^"}


def point_json(point: FrontPoint) -> dict[str, Any]:
    return {"preference": point.preference.as_dict(), "canonical": point.preference.canonical,
            "accuracy": point.accuracy, "average": point.average, "on_front": point.on_front}


def row_json(report: FrontReport, pref: Preference) -> dict[str, Any]:
    """One preference across every model: {"preference", "accuracy": {model: {task..., average}}}."""
    accuracy = {}
    for name, model in report.models.items():
        point = model.point(pref)
        if point is not None:
            accuracy[name] = with_average(point.accuracy)
    return {"preference": pref.canonical, "accuracy": accuracy}


def front_json(report: FrontReport) -> dict[str, Any]:
    return {
        "format": FRONT_FORMAT,
        "family_id": report.family_id,
        "method": report.method,
        "tasks": report.tasks,
        "settings": report.config.model_dump(),
        "preferences": [p.canonical for p in report.preferences],
        "hypervolume": {name: m.hypervolume for name, m in report.models.items()},
        "igd_plus": {name: m.igd_plus for name, m in report.models.items() if m.igd_plus is not None},
        "equal": row_json(report, report.equal),
        "priority": {t: row_json(report, p) for t, p in report.priority().items()},
        "references": None if report.references is None else {"finetuned": report.references.finetuned,
                                                               "merges": report.references.merges},
        "trade_offs": {name: asdict(t) | {"vertex_over_finetuned": t.vertex_over_finetuned,
                                          "equal_over_best_merge": t.equal_over_best_merge}
                       for name, t in report.trade_offs().items()},
        "models": {name: {"hypervolume": m.hypervolume, "igd_plus": m.igd_plus, "per_preference": m.per_preference,
                          "seconds": round(m.seconds, 2), "disk_bytes": m.disk_bytes,
                          "resident_bytes": m.resident_bytes or None, "points": [point_json(p) for p in m.points]}
                   for name, m in report.models.items()},
    }


def keep_front(store: str | Path, report: FrontReport) -> Path:
    """Keep the report's family front beside it in the store (GET /families/{id}/front, /ui)."""
    return write_stored_front(store, stored_front(report))


def stored_front(report: FrontReport) -> StoredFront:
    """What the store keeps of the report: the family's own points (and a point-set's members)."""
    def points(name: str) -> Optional[list[StoredPoint]]:
        model = report.models.get(name)
        if model is None:
            return None
        return [StoredPoint(preference=p.preference.canonical, accuracy=p.accuracy, on_front=p.on_front)
                for p in model.points]

    return StoredFront(family_id=report.family_id, tasks=report.tasks, created=now_iso(),
                       test_limit=report.config.test_limit, hypervolume=report.models[FAMILY].hypervolume,
                       points=points(FAMILY) or [], members=points(MEMBERS))


def front_markdown(report: FrontReport) -> str:
    tasks = report.tasks
    igd = any(m.igd_plus is not None for m in report.models.values())
    lines = [f"# Pareto front of family {report.family_id} ({report.method}), tasks {', '.join(tasks)}", "",
             f"{len(report.preferences)} preferences; hypervolume of the non-dominated accuracies, reference 0"
             + ("; IGD+ against the ground truth's non-dominated accuracies (lower is better)." if igd else "."),
             "Rows named `: members`, `: predicted` and the coefficient sets are sets of points, not one per "
             "preference.", "",
             "A family's cost: its files on disk, and what serving it keeps on a GPU's device in bfloat16 "
             "(beside its cache of variants).", "",
             "| model | hypervolume |" + (" IGD+ |" if igd else "") + " points on front | seconds | disk MB | resident MB |",
             "|---|---|" + ("---|" if igd else "") + "---|---|---|---|"]
    for name, m in report.models.items():
        on = sum(p.on_front for p in m.points)
        igd_cell = (f" {m.igd_plus:.4f} |" if m.igd_plus is not None else " |") if igd else ""
        disk = "" if m.disk_bytes is None else f"{m.disk_bytes / 1e6:.2f}"
        resident = f"{m.resident_bytes['bfloat16'] / 1e6:.2f}" if m.resident_bytes else ""
        lines.append(f"| {name} | {m.hypervolume:.4f} |{igd_cell} {on}/{len(m.points)} | {m.seconds:.1f} | {disk} | "
                     f"{resident} |")
    trade_offs = report.trade_offs()
    if trade_offs:
        lines += ["", "## What each model gives up", "",
                  "At its worst vertex: task k's accuracy at the one-hot preference of k, over fine-tuned tower k's. "
                  f"At the equal preference: its average accuracy, over the best single merge's "
                  f"({next(iter(trade_offs.values())).best_merge}).", "",
                  "| model | worst vertex | accuracy % | fine-tuned % | ratio | equal avg % | best merge avg % | ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, t in trade_offs.items():
            lines.append(f"| {name} | {t.worst_vertex_task} | {100 * t.worst_vertex_accuracy:.1f} | "
                         f"{100 * t.finetuned_accuracy:.1f} | {t.vertex_over_finetuned:.3f} | "
                         f"{100 * t.equal_average:.1f} | {100 * t.best_merge_average:.1f} | "
                         f"{t.equal_over_best_merge:.3f} |")
    anchors = [("equal", report.equal)] + [(f"0.7 on {t}", p) for t, p in report.priority().items()]
    lines += ["", "## Equal and priority preferences (accuracy %)", "",
              _table(report, [(label, pref) for label, pref in anchors]), "",
              "## Every preference (accuracy %; * = on the model's front)", "",
              _table(report, [(pref.canonical, pref) for pref in report.preferences], mark_front=True)]
    return "\n".join(lines) + "\n"


def _table(report: FrontReport, prefs: list[tuple[str, Preference]], mark_front: bool = False) -> str:
    rows = {}
    for label, pref in prefs:
        for name, model in report.models.items():
            point = model.point(pref)
            if point is None:
                continue
            key = f"{name} @ {label}" + (" *" if mark_front and point.on_front else "")
            rows[key] = point.accuracy
    return markdown_table(rows, report.tasks)


def plot_front(report: FrontReport, path: Path) -> None:
    """2 tasks: the accuracy plane; more: one panel per pair of tasks. Family and baselines in each."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    pairs = list(combinations(range(len(report.tasks)), 2)) or [(0, 0)]
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig = Figure(figsize=(4.2 * cols, 4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (i, j) in zip(axes.flat, pairs):
        _panel(ax, report, i, j, curve=len(report.tasks) == 2)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    # the legend below the panels, where it covers no point
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8, frameon=False)
    dominated = any(not p.on_front for m in report.models.values() for p in m.points)
    markers = ("large markers: non-dominated points of their model, small: dominated" if dominated
               else "every point is non-dominated within its model")
    fig.suptitle(f"{report.family_id}: accuracy at {len(report.preferences)} preferences\n"
                 f"{markers}; star: equal preference", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * math.ceil(len(labels) / 3), 1, 1))
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _panel(ax, report: FrontReport, i: int, j: int, curve: bool) -> None:
    ti, tj = report.tasks[i], report.tasks[j]
    for name, model in report.models.items():
        points = sorted(model.points, key=lambda p: p.preference.weights[i])  # along the preference
        xs = [p.accuracy[ti] for p in points]
        ys = [p.accuracy[tj] for p in points]
        marker = MARKERS.get(name, "x" if model.per_preference else ".")
        line = ax.plot(xs, ys, linestyle="-" if curve and model.per_preference else "", marker=marker, alpha=0.35,
                       ms=4)[0]
        front = [(x, y) for x, y, p in zip(xs, ys, points) if p.on_front]
        ax.plot([x for x, _ in front], [y for _, y in front], linestyle="", marker=marker, color=line.get_color(),
                ms=7, label=f"{name} (HV {model.hypervolume:.3f})")
        eq = model.point(report.equal)
        if eq is not None:
            ax.plot(eq.accuracy[ti], eq.accuracy[tj], "*", color=line.get_color(), ms=13, mec="k", zorder=5)
    ax.set_xlabel(f"{ti} accuracy")
    ax.set_ylabel(f"{tj} accuracy")
    ax.grid(alpha=0.3)


def write_front(report: FrontReport, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "front.json", "md": out / "front.md", "png": out / "front.png"}
    write_text(paths["json"], json.dumps(front_json(report), indent=2))
    write_text(paths["md"], front_markdown(report))
    plot_front(report, paths["png"])
    return paths
