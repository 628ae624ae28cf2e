"""Draws bench/results/latest.png from the JSON `cargo xtask bench` writes.

Usage: chart.py RESULTS.json OUT.png
Three panels: throughput relative to no tracing, ns added per syscall, and
agent CPU against a fixed request rate. A scenario that failed or did not run
is left out of its panel, never drawn as zero.
"""
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def ok(section):
    return isinstance(section, (dict, list)) and not (isinstance(section, dict) and "error" in section)


def main(src: str, dst: str) -> None:
    with open(src, encoding="utf-8") as f:
        res = json.load(f)
    fig, axes = plt.subplots(1, 3, figsize=(19, 5.2), gridspec_kw={"width_ratios": [1.8, 1, 1]})
    m = res["machine"]
    mode = "quick smoke run" if res["quick"] else f'{res["rounds"]} rounds x {res["seconds"]:.0f} s'
    fig.suptitle(
        f'waggle overhead - {m["cpu_model"]}, {m["cores"]} cores, Linux {m["kernel"]} - {m["date_utc"]} ({mode})',
        fontsize=11,
    )

    # 1. Throughput ratios.
    ax = axes[0]
    labels, values, colors = [], [], []
    if ok(res.get("nginx")):
        labels.append("nginx\nwaggle")
        values.append(res["nginx"]["rps_ratio"])
        colors.append("tab:orange")
    if ok(res.get("flask")):
        labels += ["Flask\nwaggle", "Flask\nOTel SDK"]
        values += [res["flask"]["waggle_ratio"], res["flask"]["sdk_ratio"]]
        colors += ["tab:orange", "tab:gray"]
    if ok(res.get("conn")):
        if res["conn"].get("nginx"):
            labels.append("nginx close\nwaggle")
            values.append(res["conn"]["nginx"]["rps_ratio"])
            colors.append("tab:orange")
        if res["conn"].get("flask"):
            labels += ["Flask close\nwaggle", "Flask close\nOTel SDK"]
            values += [res["conn"]["flask"]["waggle_ratio"], res["conn"]["flask"]["sdk_ratio"]]
            colors += ["tab:orange", "tab:gray"]
    if ok(res.get("node")):
        labels += ["Node.js\nwaggle", "Node.js\nOTel SDK"]
        values += [res["node"]["waggle_ratio"], res["node"]["sdk_ratio"]]
        colors += ["tab:orange", "tab:gray"]
    if ok(res.get("postgres")):
        labels.append("pgbench -S\nwaggle")
        values.append(res["postgres"]["tps_ratio"])
        colors.append("tab:orange")
    # A ratio that could not be computed is null in the JSON: no bar.
    kept = [(label, v, c) for label, v, c in zip(labels, values, colors) if v is not None]
    labels, values, colors = ([list(x) for x in zip(*kept)]) if kept else ([], [], [])
    bars = ax.bar(labels, values, color=colors)
    ax.tick_params(axis="x", labelsize=8)
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.3f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=9)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(0.97, color="tab:red", linestyle="--", linewidth=0.8, label="target 0.97x")
    ax.set_ylim(min([0.5] + [v - 0.05 for v in values]), max([1.05] + [v + 0.05 for v in values]))
    ax.set_ylabel("throughput relative to no tracing")
    ax.set_title("Throughput (higher is better)")
    ax.legend(loc="upper right", fontsize=8)

    # 2. ns added per syscall.
    ax = axes[1]
    if ok(res.get("syscalls")):
        rows = res["syscalls"]
        xs = range(len(rows))
        def added(r, key):
            # A probe set that could not run is null in the JSON: no bar.
            return r[key] - r["none_ns"] if r[key] is not None and r["none_ns"] is not None else math.nan

        empty = [added(r, "empty_ns") for r in rows]
        waggle = [added(r, "waggle_ns") for r in rows]
        w = 0.38
        b1 = ax.bar([x - w / 2 for x in xs], empty, w, label="empty programs (floor)", color="tab:gray")
        b2 = ax.bar([x + w / 2 for x in xs], waggle, w, label="waggle", color="tab:orange")
        for bar, v in list(zip(b1, empty)) + list(zip(b2, waggle)):
            if math.isnan(v):
                continue
            ax.annotate(f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, max(v, 0)), ha="center", va="bottom", fontsize=9)
        ax.set_xticks(list(xs), [r["mode"] for r in rows])
        ax.legend(fontsize=8)
    ax.set_ylabel("ns added per syscall")
    ax.set_title("Per-syscall cost (lower is better)")

    # 3. Agent CPU at fixed rates.
    ax = axes[2]
    sus = res.get("sustained")
    if ok(sus) and sus["steps"]:
        steps = sus["steps"]
        rates = [s["achieved"] for s in steps]
        cpu = [s["agent_millicores"] for s in steps]
        ax.plot(rates, cpu, marker="o", color="tab:orange", label="agent CPU")
        for s in steps:
            if not s["clean"]:
                ax.plot(s["achieved"], s["agent_millicores"], "x", color="tab:red", markersize=12)
        top = max(rates)
        ax.plot([0, top], [0, 50 * top / 10000], color="tab:red", linestyle="--", linewidth=0.8, label="target 50m / 10k rps")
        ax.set_xlim(0, top * 1.05)
        ax.set_ylim(0, max(cpu + [50 * top / 10000]) * 1.15)
        best = sus.get("highest_clean_rate")
        ax.set_title(f"Fixed-rate load: highest clean rate {best if best else 'none'} rps")
        ax.legend(fontsize=8)
    else:
        ax.set_title("Fixed-rate load")
    ax.set_xlabel("requests/s (achieved); x = events lost or rate missed")
    ax.set_ylabel("agent CPU (millicores)")

    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: chart.py RESULTS.json OUT.png")
    main(sys.argv[1], sys.argv[2])
