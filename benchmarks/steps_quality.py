"""Sampler steps versus quality: support precision and TV distance of showcase compositions.

Samples each composition at every step count in STEPS with the committed
checkpoints, evaluates it (evaluate_composition.py), prints a table, and writes
a JSON file and a PNG plot (precision and TV against steps) to OUT_DIR. The
"MN2 alone" row is a base model sampled as the classifiers' trajectory pools
are (their --trajectory-steps); ONLY (a regular expression) picks rows by label.

    python benchmarks/steps_quality.py                                  # 128 samples each
    python benchmarks/steps_quality.py --num-samples 512 --compile
    python benchmarks/steps_quality.py --only "alone" --steps 500 250 200 150 100 --out-dir <dir>
"""
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import evaluate_composition  # noqa: E402
import sample_3way_composition  # noqa: E402
import sample_composition  # noqa: E402
import sample_individual_model  # noqa: E402
from cli import UserError, override_globals, run_main  # noqa: E402

STEPS = [500, 250, 100, 50]
NUM_SAMPLES = 128
BATCH_SIZE = 128
CKPT_DIR = "checkpoints"
SEED = 0
COMPILE = False
ONLY = ""  # regular expression over the row labels; empty: every row
PLOT_ONLY = False  # redraw the plot from OUT_DIR/steps_quality.json without sampling
OUT_DIR = "benchmarks/results/steps_quality"

# (label, sample script module, its flags)
COMPOSITIONS = [
    ("M1/M2 (1,1) λ=20", sample_composition, ["--y-1", "1", "--y-2", "1"]),
    ("M1/M2 (2,2) λ=20", sample_composition, ["--y-1", "2", "--y-2", "2"]),
    ("MN (1,2,3) λ=10,75", sample_3way_composition, []),
    ("MN2 alone", sample_individual_model, ["--gen-idx", "MN2"]),
]

OVERRIDABLE = ["STEPS", "NUM_SAMPLES", "BATCH_SIZE", "CKPT_DIR", "SEED", "COMPILE", "ONLY", "PLOT_ONLY",
               "OUT_DIR"]


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_precision, ax_tv) = plt.subplots(1, 2, figsize=(10, 4))
    for label in dict.fromkeys(row["composition"] for row in rows):
        mine = sorted((r for r in rows if r["composition"] == label), key=lambda r: r["steps"])
        steps = [r["steps"] for r in mine]
        precision = [r["support_precision"] for r in mine]
        errors = [[p - r["support_precision_ci"][0] for p, r in zip(precision, mine)],
                  [r["support_precision_ci"][1] - p for p, r in zip(precision, mine)]]
        ax_precision.errorbar(steps, precision, yerr=errors, marker="o", capsize=3, label=label)
        ax_tv.plot(steps, [r["tv_distance"] for r in mine], marker="o", label=label)
    all_steps = sorted({r["steps"] for r in rows})
    for ax, ylabel in ((ax_precision, "support precision (95% CI)"), (ax_tv, "TV to the exact (λ = 1) target")):
        ax.set(xlabel="PC steps", ylabel=ylabel, xscale="log", ylim=(0, 1.02))
        ax.set_xticks(all_steps, [str(s) for s in all_steps])
        ax.minorticks_off()
    ax_precision.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    config = dict(globals())
    override_globals(config, OVERRIDABLE, __doc__, argv, positive=["STEPS", "NUM_SAMPLES", "BATCH_SIZE"])
    out = Path(config["OUT_DIR"])
    if config["PLOT_ONLY"]:
        plot(json.loads((out / "steps_quality.json").read_text()), out / "steps_quality.png")
        print(f"wrote {out / 'steps_quality.png'}")
        return
    try:
        chosen = [row for row in COMPOSITIONS if re.search(config["ONLY"], row[0])]
    except re.error as error:
        raise UserError(f"--only {config['ONLY']!r} is not a regular expression: {error}") from None
    if not chosen:
        raise UserError(f"--only {config['ONLY']!r} matches no row; the rows: {[row[0] for row in COMPOSITIONS]}")
    rows = []
    for label, script, flags in chosen:
        for steps in config["STEPS"]:
            out_dir = Path(config["OUT_DIR"]) / f"steps_{steps}"
            png = script.main([*flags, "--num-steps", str(steps), "--num-samples", str(config["NUM_SAMPLES"]),
                               "--batch-size", str(config["BATCH_SIZE"]), "--ckpt-dir", config["CKPT_DIR"],
                               "--seed", str(config["SEED"]), "--out-dir", str(out_dir),
                               *(["--compile"] if config["COMPILE"] else [])])
            report = evaluate_composition.main([str(png.with_suffix(".pt"))])
            rows.append({"composition": label, "steps": steps, "num_samples": report["num_samples"],
                         "support_precision": report["support_precision"],
                         "support_precision_ci": report["support_precision_ci"],
                         "tv_distance": report["tv_distance"], "unrecognisable": report["unrecognisable_share"]})
    print(f"\n{'composition':<22} {'steps':>5} {'n':>5} {'precision (95% CI)':>24} {'TV':>6} {'unrecognisable':>14}")
    for r in rows:
        lo, hi = r["support_precision_ci"]
        print(f"{r['composition']:<22} {r['steps']:>5} {r['num_samples']:>5} "
              f"{r['support_precision']:>8.1%} ({lo:.1%}–{hi:.1%}) {r['tv_distance']:>6.3f} {r['unrecognisable']:>14.1%}")
    (out / "steps_quality.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, out / "steps_quality.png")
    print(f"wrote {out / 'steps_quality.json'} and {out / 'steps_quality.png'}")


if __name__ == "__main__":
    run_main(main)
