"""Sample tasks for SpotWorkerFleet (``PIPELINE_TASK=task:csv_stats`` and ``task:summarize``).

``csv_stats``: statistics of every numeric column of a CSV input object, written as ``stats.json``.
``summarize``: the second stage; reads the stats a first-stage task forwarded and writes a one-line summary.
"""

from __future__ import annotations

import csv
import io
import json
import math


def column_statistics(text: str) -> dict[str, dict[str, float]]:
    """count, mean, min, max and standard deviation of each column whose every value is a number."""
    reader = csv.DictReader(io.StringIO(text))
    columns: dict[str, list[float]] = {name: [] for name in reader.fieldnames or []}
    numeric = set(columns)
    for row in reader:
        for name in list(numeric):
            try:
                columns[name].append(float(row[name]))
            except (TypeError, ValueError):
                numeric.discard(name)
    stats = {}
    for name in sorted(numeric):
        values = columns[name]
        if not values:
            continue
        mean = sum(values) / len(values)
        variance = sum((v - mean) ** 2 for v in values) / len(values)
        stats[name] = {
            "count": len(values),
            "mean": mean,
            "min": min(values),
            "max": max(values),
            "stddev": math.sqrt(variance),
        }
    return stats


def csv_stats(task) -> dict:
    text = task.read_input().decode("utf-8")
    task.progress(0.5, "parsed")
    stats = column_statistics(text)
    task.write_output("stats.json", json.dumps(stats, sort_keys=True), content_type="application/json")
    return {"columns": len(stats)}


def summarize(task) -> dict:
    (stats_key,) = [key for key in task.body.get("outputs", []) if key.endswith("stats.json")]
    stats = json.loads(task.read_object(stats_key))
    rows = max((column["count"] for column in stats.values()), default=0)
    summary = {"source": stats_key, "columns": sorted(stats), "rows": rows}
    task.write_output("summary.json", json.dumps(summary, sort_keys=True), content_type="application/json")
    return summary
