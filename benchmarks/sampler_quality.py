"""Quality against cost: every showcase row, sampled at several samplers and step counts.

For each row of the results table (showcase.SHOWCASE, the committed checkpoints) and each SETTINGS entry
("<sampler>:<steps>"), draws NUM_SAMPLES samples with the row's sample script and evaluates them with
evaluate_composition.py. The baseline of a row is its committed PC evaluation in BASELINE_DIR (what
reproduce.py wrote; 500 or 1,000 score evaluations per sample). A setting meets a row's target when its
support precision lies inside or above the baseline's 95% interval (guided rows, λ > 1), or its TV to the
exact target inside or below it (the λ = 1 rows, whose target is the exact composition). Prints the
table, names the cheapest setting that meets each row, and writes a JSON file, a Markdown table and a PNG
plot to OUT_DIR (the default one also rewrites the copy of the table in docs/performance.md). Finished cells are kept: a rerun
only samples what is missing.

    python benchmarks/sampler_quality.py                        # every row, every setting (about an hour, 2 cores)
    python benchmarks/sampler_quality.py --only "MN" --settings heun-churn:40 pc:250
    python benchmarks/sampler_quality.py --plot-only
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sculpting.artefacts import composition_stem, evaluation_report  # noqa: E402
from sculpting.cli import configure, run_main, run_script  # noqa: E402
from sculpting.errors import UserError  # noqa: E402
from sculpting.reproduction.report import update_markers  # noqa: E402
from samplers import SAMPLERS  # noqa: E402
from sculpting.showcase import SHOWCASE, sample_command  # noqa: E402

SETTINGS = ["heun-churn:10", "heun-churn:20", "heun-churn:40", "heun:40"]  # <sampler>:<steps> each row is sampled at
NUM_SAMPLES = 512  # per row and setting
BATCH_SIZE = 128
EXPORT_DIR = "checkpoints"  # under the reference file names: the shipped checkpoints, or a reproduce.py EXPORT_DIR
BASELINE_DIR = "results/cpu"  # the committed PC rows (reproduce.py --out-dir results/cpu); "" for none
PRECISION = "auto"
SIGMA_MIN = 0.05
CHURN = 40.0
SEED = 0
ONLY = ""  # regular expression over the row labels; empty: every row
PLOT_ONLY = False  # redraw the table and plot from OUT_DIR/sampler_quality.json without sampling
SAMPLE_MISSING = True  # False: tabulate only the cells OUT_DIR already holds, sampling none
OUT_DIR = "benchmarks/results/sampler_quality"

MAX_EVALUATIONS = 100  # the target's budget of score evaluations per sample


def row_label(models, observations, scales):
    return f"{'/'.join(models)} {tuple(observations)} λ={','.join(f'{s:g}' for s in scales)}"


def parse_setting(text):
    sampler, _, steps = text.partition(":")
    if sampler not in SAMPLERS or not steps.isdigit() or int(steps) < 2:
        raise UserError(f"--settings entry {text!r} is not <sampler>:<steps> with a sampler of {list(SAMPLERS)} "
                        f"and at least 2 steps")
    return sampler, int(steps)


def cell(report, settings, label, source):
    """One table cell: a row's evaluation at one sampler setting."""
    return {"composition": label, "source": source, "sampler": settings.get("sampler", "pc"),
            "num_steps": settings["num_steps"],
            "evaluations": settings.get("score_evaluations_per_sample", 2 * settings["num_steps"]),
            "denoise_last_step": settings.get("denoise_last_step", False), "precision": settings.get("precision"),
            "num_samples": report["num_samples"], "support_precision": report["support_precision"],
            "support_precision_ci": report["support_precision_ci"], "tv_distance": report["tv_distance"],
            "tv_distance_ci": report["tv_distance_ci"], "unrecognisable": report["unrecognisable_share"],
            "seconds_per_sample": (settings["sampling_seconds"] / report["num_samples"]
                                   if "sampling_seconds" in settings else None),
            "cpu_capability": settings.get("cpu_capability")}


def measure(config, row, sampler, steps):
    """Sample and evaluate one row at one setting, unless OUT_DIR already holds that evaluation; None where it
    does not and SAMPLE_MISSING is off."""
    script, models, observations, scales = row
    stem = composition_stem(models, observations, scales, config["SEED"])
    out_dir = Path(config["OUT_DIR"]) / f"{sampler}_{steps}"
    report_path, settings_path = out_dir / evaluation_report(stem), out_dir / f"{stem}.json"
    if not report_path.exists() and not config["SAMPLE_MISSING"]:
        return None
    if not report_path.exists() and not settings_path.exists():  # the .json is written last: nothing sampled yet
        flags = ["--sampler", sampler, "--num-steps", str(steps), "--denoise-last-step", "--batch-size",
                 str(config["BATCH_SIZE"]), "--precision", config["PRECISION"], "--sigma-min",
                 str(config["SIGMA_MIN"]), "--churn", str(config["CHURN"]), "--seed", str(config["SEED"])]
        print(f"sampling {row_label(models, observations, scales)} with {sampler}:{steps}", flush=True)
        run_script(sample_command(script, models, observations, scales, Path(config["EXPORT_DIR"]), out_dir,
                           config["NUM_SAMPLES"], flags))
    if not report_path.exists():  # sampled (now or by an interrupted run), not yet evaluated
        run_script(["evaluate_composition.py", str(out_dir / f"{stem}.pt")])
    return cell(json.loads(report_path.read_text()), json.loads(settings_path.read_text()),
                row_label(models, observations, scales), str(out_dir))


def baseline(config, row):
    script, models, observations, scales = row
    stem = composition_stem(models, observations, scales)
    report_path = Path(config["BASELINE_DIR"]) / evaluation_report(stem)
    if not config["BASELINE_DIR"] or not report_path.exists():
        return None
    settings = json.loads((report_path.parent / f"{stem}.json").read_text())
    return cell(json.loads(report_path.read_text()), settings, row_label(models, observations, scales),
                str(report_path.parent))


def is_exact_row(label):
    return label.endswith("λ=1")


def meets(candidate, reference):
    """Inside or above the reference's 95% interval of support precision (guided rows), or inside or below its
    TV interval (λ = 1 rows)."""
    if is_exact_row(candidate["composition"]):
        return candidate["tv_distance"] <= reference["tv_distance_ci"][1]
    return candidate["support_precision"] >= reference["support_precision_ci"][0]


def verdicts(cells):
    """{row label: (its baseline cell, the cheapest cell within MAX_EVALUATIONS that meets it, or None)}."""
    out = {}
    for label in dict.fromkeys(c["composition"] for c in cells):
        mine = [c for c in cells if c["composition"] == label]
        reference = next((c for c in mine if c.get("baseline")), None)
        if reference is None:
            continue
        cheap = sorted((c for c in mine if c["evaluations"] <= MAX_EVALUATIONS and meets(c, reference)),
                       key=lambda c: c["evaluations"])
        out[label] = (reference, cheap[0] if cheap else None)
    return out


def name(c):
    return f"{c['sampler']}:{c['num_steps']}"


def table(cells):
    """Every cell, one line each."""
    lines = ["| composition | sampler:steps | score evaluations / sample | support precision (95% CI) | "
             "TV to exact target (95% CI) | unrecognisable | s / sample | meets the PC row |",
             "|---|---|---|---|---|---|---|---|"]
    judged = verdicts(cells)
    for c in cells:
        reference = judged.get(c["composition"], (None, None))[0]
        verdict = "baseline" if c is reference else ("yes" if reference and meets(c, reference) else "no")
        seconds = f"{c['seconds_per_sample']:.3f}" if c["seconds_per_sample"] is not None else "–"
        lines.append(f"| {c['composition']} | {name(c)} | {c['evaluations']} | {judged_value(c, 'support_precision')} | "
                     f"{judged_value(c, 'tv_distance')} | {c['unrecognisable']:.1%} | {seconds} | {verdict} |")
    return "\n".join(lines)


def judged_value(c, key):
    low, high = c[f"{key}_ci"]
    return f"{c[key]:.1%} ({low:.1%}–{high:.1%})" if key == "support_precision" else f"{c[key]:.3f} ({low:.3f}–{high:.3f})"


def shown(c, key):
    return f"{name(c)} ({c['evaluations']}): {judged_value(c, key)}" if c else "–"


def summary(cells):
    """Per row: what it is judged by, its PC baseline, the best cell within the budget, the cheapest that meets it."""
    lines = [f"| composition | judged by | PC baseline | best within {MAX_EVALUATIONS} evaluations | "
             f"cheapest within {MAX_EVALUATIONS} that meets the baseline |", "|---|---|---|---|---|"]
    for label, (reference, cheapest) in verdicts(cells).items():
        key = "tv_distance" if is_exact_row(label) else "support_precision"
        within = [c for c in cells if c["composition"] == label and not c.get("baseline")
                  and c["evaluations"] <= MAX_EVALUATIONS]
        best = (min if key == "tv_distance" else max)(within, key=lambda c: c[key], default=None)
        verdict = f"{name(cheapest)} ({cheapest['evaluations']})" if cheapest else "none"
        measure_name = "TV" if key == "tv_distance" else "support precision"
        lines.append(f"| {label} | {measure_name} | {shown(reference, key)} | {shown(best, key)} | {verdict} |")
    return "\n".join(lines)


def plot(cells, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(c["composition"] for c in cells))
    columns = 4
    rows = -(-len(labels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    for ax, label in zip(axes.flat, labels):
        exact = is_exact_row(label)
        key, ci = ("tv_distance", "tv_distance_ci") if exact else ("support_precision", "support_precision_ci")
        for sampler, marker in (("pc", "s"), ("heun", "^"), ("heun-churn", "o")):
            mine = sorted((c for c in cells if c["composition"] == label and c["sampler"] == sampler),
                          key=lambda c: c["evaluations"])
            if mine:
                values = [c[key] for c in mine]
                errors = [[v - c[ci][0] for v, c in zip(values, mine)], [c[ci][1] - v for v, c in zip(values, mine)]]
                ax.errorbar([c["evaluations"] for c in mine], values, yerr=errors, marker=marker, capsize=2,
                            label=sampler, linestyle="-" if sampler != "pc" else "none")
        ax.axvline(MAX_EVALUATIONS, color="grey", linewidth=0.6, linestyle=":")
        ax.set(title=label, xscale="log", ylim=(0, 1.02))
        ticks = sorted({c["evaluations"] for c in cells if c["composition"] == label})
        ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_ylabel("TV to exact target" if exact else "support precision", fontsize=8)
        ax.title.set_fontsize(9)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("score evaluations per sample")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    config = configure(globals(), argv, exclude=["MAX_EVALUATIONS"])
    out = Path(config["OUT_DIR"])
    results = out / "sampler_quality.json"
    if config["PLOT_ONLY"]:
        cells = json.loads(results.read_text())
    else:
        settings = [parse_setting(text) for text in config["SETTINGS"]]
        try:
            rows = [row for row in SHOWCASE if re.search(config["ONLY"], row_label(*row[1:]))]
        except re.error as error:
            raise UserError(f"--only {config['ONLY']!r} is not a regular expression: {error}") from None
        if not rows:
            raise UserError(f"--only {config['ONLY']!r} matches no row; the rows: "
                            f"{[row_label(*row[1:]) for row in SHOWCASE]}")
        cells = []
        for row in rows:
            reference = baseline(config, row)
            if reference is not None:
                cells.append({**reference, "baseline": True})
            measured = (measure(config, row, sampler, steps) for sampler, steps in settings)
            cells += [{**found, "source": "sampled"} for found in measured if found is not None]
        out.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(cells, indent=2) + "\n")
    text = f"{table(cells)}\n\n{summary(cells)}"
    print(text)
    (out / "sampler_quality.md").write_text(text + "\n")
    plot(cells, out / "sampler_quality.png")
    if out.resolve() == (ROOT / OUT_DIR).resolve():  # the committed results: the docs' copy of the table too
        update_markers(ROOT / "docs" / "performance.md", "sampler_quality", summary(cells))
    print(f"wrote {results}, {out / 'sampler_quality.md'} and {out / 'sampler_quality.png'}")


if __name__ == "__main__":
    run_main(main)
