"""Sampler steps versus quality: support precision and TV distance of showcase compositions.

Samples each composition at every step count in STEPS with the committed
checkpoints, evaluates it (evaluate_composition.py), prints a table, and writes
a JSON file and a PNG plot (precision and TV against steps) to OUT_DIR. The
"MN2 alone" row is a base model sampled as the classifiers' trajectory pools
are (their --trajectory-steps); ONLY (a regular expression) picks rows by label. Each sample
script and evaluation runs as a subprocess.

    python benchmarks/steps_quality.py                                  # 128 samples each
    python benchmarks/steps_quality.py --num-samples 512 --compile auto
    python benchmarks/steps_quality.py --only "alone" --num-steps 500 250 200 150 100 --out-dir <dir>
"""
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sculpting.artefacts import composition_stem, evaluation_report, individual_stem  # noqa: E402
from sculpting.cli import configure, run_main, run_script  # noqa: E402
from sculpting.errors import UserError  # noqa: E402
from sculpting.showcase import sample_command  # noqa: E402

NUM_STEPS = [500, 250, 100, 50]  # the PC step counts each row is sampled at
NUM_SAMPLES = 128  # per row and step count
BATCH_SIZE = 128
EXPORT_DIR = "checkpoints"  # under the reference file names: the shipped checkpoints, or a reproduce.py EXPORT_DIR
SEED = 0
COMPILE = "off"
ONLY = ""  # regular expression over the row labels; empty: every row
PLOT_ONLY = False  # redraw the plot from OUT_DIR/steps_quality.json without sampling
OUT_DIR = "benchmarks/results/steps_quality"

# (label, models, observations, guidance scales); a row of one model samples that base model alone
COMPOSITIONS = [
    ("M1/M2 (1,1) λ=20", ["M1", "M2"], [1, 1], [20.0]),
    ("M1/M2 (2,2) λ=20", ["M1", "M2"], [2, 2], [20.0]),
    ("MN (1,2,3) λ=10,75", ["MN1", "MN2", "MN3"], [1, 2, 3], [10.0, 75.0]),
    ("MN2 alone", ["MN2"], [], []),
]


def sample_and_evaluate(models, observations, scales, out_dir, flags, config):
    """Sample a row with its sample script, evaluate the samples; the evaluation's report."""
    if len(models) == 1:
        stem = individual_stem(models[0], config["SEED"])
        command = ["sample_individual_model.py", "--gen-idx", models[0], "--gen-ckpt-dir", config["EXPORT_DIR"],
                   "--out-dir", str(out_dir), "--num-samples", str(config["NUM_SAMPLES"]), *flags]
    else:
        stem = composition_stem(models, observations, scales, config["SEED"])
        script = "sample_3way_composition.py" if len(models) == 3 else "sample_composition.py"
        command = sample_command(script, models, observations, scales, Path(config["EXPORT_DIR"]), out_dir,
                                 config["NUM_SAMPLES"], flags)
    run_script(command)
    run_script(["evaluate_composition.py", str(out_dir / f"{stem}.pt")])
    return json.loads((out_dir / evaluation_report(stem)).read_text())


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
    config = configure(globals(), argv)
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
    for label, models, observations, scales in chosen:
        for steps in config["NUM_STEPS"]:
            flags = ["--num-steps", str(steps), "--batch-size", str(config["BATCH_SIZE"]),
                     "--seed", str(config["SEED"]), "--compile", config["COMPILE"]]
            report = sample_and_evaluate(models, observations, scales, Path(config["OUT_DIR"]) / f"steps_{steps}",
                                         flags, config)
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
