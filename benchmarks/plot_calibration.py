"""Reliability diagrams (Guo et al. 2017) of a ``pulmo train cxr-classify`` run, per split and per source.

Reads the run's ``results.json`` (its ``reliability`` bins and the per-source ECE) and writes one PNG with a
panel per split (validation, test, external when a source was left out): accuracy against mean confidence per
15-bin confidence bin, bar width = bin, the diagonal = perfect calibration, the ECE in the title, and the
per-source ECEs listed. Plotting with matplotlib (``pip install -e ".[docs]"``).

    python benchmarks/plot_calibration.py runs/cls-v2/results.json docs/figures/cxr-classify-reliability.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="results.json of a cxr-classify training run")
    ap.add_argument("out", help="PNG to write")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(args.results).read_text())
    splits = [k for k in ("val", "test", "external") if k in results and results[k].get("reliability")]
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 4.6), squeeze=False)
    for ax, split in zip(axes[0], splits):
        r = results[split]
        bins = r["reliability"]
        for b in bins:
            ax.bar(b["lower"], b["accuracy"], width=b["upper"] - b["lower"], align="edge", color="#4c72b0",
                   edgecolor="white", alpha=0.85)
            ax.plot([b["confidence"]], [b["accuracy"]], "o", color="#dd8452", ms=3 + 6 * min(1, b["n"] / 100))
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        ece = r["overall"].get("ece")
        per_source = [f"{k.split('/', 1)[1]}: {v['ece']:.3f} (n={v['n']})" for k, v in r.items()
                      if k.startswith("source/") and v.get("ece") is not None]
        ax.set_title(f"{split}: ECE {ece:.3f} (n={r['overall']['n']})", fontsize=10)
        ax.text(0.02, 0.98, "\n".join(per_source), transform=ax.transAxes, va="top", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-class probability)")
        ax.set_ylabel("accuracy")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
