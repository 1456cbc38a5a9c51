"""The Markdown table and PNG plots of a benchmark result."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.cpu_accounting import ROLES, marginal, per_thousand_tokens, totals


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """Ratios first, then one row per scenario, target and repeat."""
    lines = [f"## {result['suite']} suite, {result['date']}", "", "| figure | value | target |", "| --- | --- | --- |"]
    for r in result["ratios"]:
        lines.append(f"| {r['figure']} | {_fmt(r['value'], digits=3)} | {r['target']} |")
    lines += ["", "| scenario | target | conc. | ok/req | req/s | tok/s | TTFT p50/p99 ms | TPOT p50 ms | ITL p99 ms | e2e p50 s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        lines.append(
            f"| {row['scenario']} | {row['target']} | {row['concurrency']} | {row['ok']}/{row['requests']} "
            f"| {_fmt(row['requests_per_s'])} | {_fmt(row['output_tokens_per_s'], digits=1)} "
            f"| {_fmt(row['ttft_s']['p50'], 1000, 1)}/{_fmt(row['ttft_s']['p99'], 1000, 1)} "
            f"| {_fmt(row['tpot_s']['p50'], 1000, 1)} | {_fmt(row['itl_s']['p99'], 1000, 1)} | {_fmt(row['e2e_s']['p50'])} |"
        )
    lines += cpu_tables(result)
    return "\n".join(lines)


def cpu_per_thousand(result: dict[str, Any], scenario: str, target: str, *, minus_idle: bool) -> dict[str, float] | None:
    """Median over repeats of each role's CPU-seconds per 1,000 output tokens (and the totals).

    ``minus_idle`` takes off what the role spends idle over the run's wall time (its fixed cost),
    leaving what the tokens cost.
    """
    idle = result.get("idle_cpu_per_s", {}).get(target.removesuffix("-ollama"), {})
    runs = []
    for row in result["rows"]:
        if row["scenario"] != scenario or row["target"] != target or "cpu_s" not in row or not row.get("output_tokens"):
            continue
        spent = marginal(row["cpu_s"], idle, row["wall_s"]) if minus_idle else row["cpu_s"]
        per = per_thousand_tokens(spent, row["output_tokens"])
        runs.append({**per, **totals(per)})
    if not runs:
        return None
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def cpu_tables(result: dict[str, Any]) -> list[str]:
    """Per scenario: CPU-s per 1,000 output tokens per role and target, under load and minus idle."""
    lines: list[str] = []
    idle = result.get("idle_cpu_per_s", {})
    if idle:
        lines += ["", "### Idle CPU (CPU-seconds per second, the fixed cost)", "",
                  "| role | " + " | ".join(idle) + " |", "| --- |" + " --- |" * len(idle)]
        for role in ROLES:
            if any(idle[t].get(role, 0.0) > 0.0005 for t in idle):
                lines.append(f"| {role} | " + " | ".join(f"{idle[t].get(role, 0.0):.3f}" for t in idle) + " |")
    for scenario in dict.fromkeys(r["scenario"] for r in result["rows"]):
        targets = list(dict.fromkeys(r["target"] for r in result["rows"] if r["scenario"] == scenario))
        tables = {(t, m): cpu_per_thousand(result, scenario, t, minus_idle=m) for t in targets for m in (False, True)}
        if not any(tables.values()):
            continue
        speed = {t: statistics.median(r["output_tokens_per_s"] for r in result["rows"]
                                      if r["scenario"] == scenario and r["target"] == t) for t in targets}
        lines += ["", f"### CPU-s per 1,000 output tokens: {scenario} (under load / minus idle)", "",
                  "| role | " + " | ".join(f"{t} ({speed[t]:.0f} tok/s)" for t in targets) + " |",
                  "| --- |" + " --- |" * len(targets)]
        keys = [*ROLES, "serving processes", "all outside the engine"]
        for key in keys:
            cells = []
            for t in targets:
                load, net = tables[(t, False)], tables[(t, True)]
                cells.append("-" if load is None or net is None else f"{load.get(key, 0.0):.2f} / {net.get(key, 0.0):.2f}")
            if any(c not in ("-", "0.00 / 0.00") for c in cells):
                bold = "**" if key == "all outside the engine" else ""
                lines.append(f"| {bold}{key}{bold} | " + " | ".join(cells) + " |")
    return lines


def plots(result: dict[str, Any], folder: Path) -> list[Path]:
    """Latency percentiles and throughput versus concurrency, one line per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    workloads = sorted({r["workload"] for r in rows})
    fig, axes = plt.subplots(len(workloads), 2, figsize=(11, 3.6 * len(workloads)), squeeze=False)
    for i, workload in enumerate(workloads):
        for target in sorted({r["target"] for r in rows if r["workload"] == workload}):
            mine = [r for r in rows if r["workload"] == workload and r["target"] == target]
            xs = sorted({r["concurrency"] for r in mine})

            def median(level: int, *path: str, runs: list[dict[str, Any]] = mine) -> float:
                values = []
                for r in runs:
                    if r["concurrency"] == level:
                        value: Any = r
                        for key in path:
                            value = value[key]
                        values.append(value or 0.0)
                return statistics.median(values)

            axes[i][0].plot(xs, [median(x, "output_tokens_per_s") for x in xs], "o-", label=target)
            for pct, style in (("p50", "o-"), ("p99", "x--")):
                axes[i][1].plot(xs, [median(x, "ttft_s", pct) * 1000 for x in xs], style, label=f"{target} TTFT {pct}")
        axes[i][0].set(title=f"{workload}: throughput", xlabel="concurrent streams", ylabel="output tokens/s")
        axes[i][1].set(title=f"{workload}: time to first token", xlabel="concurrent streams", ylabel="ms")
        for ax in axes[i]:
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    path = folder / "plots.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def write_report(result: dict[str, Any], folder: Path) -> str:
    """Write ``report.md`` and the plots into ``folder``; returns the Markdown."""
    text = markdown(result)
    (folder / "report.md").write_text(text + "\n\n![plots](plots.png)\n")
    plots(result, folder)
    return text
