"""Does bfloat16 autocast keep the showcase metrics? Reduced precision against the float32 results.

For each showcase composition in ROWS (indices into showcase.SHOWCASE), reads the float32 evaluation in
results/<SCALE>/ (the committed rows at the cpu scale; another scale's are written by `python reproduce.py
--scale SCALE --out-dir results/SCALE`), samples the composition again with the same settings (models,
λ, number of samples, sampler steps and seed; the scale's other sampler flags) under PRECISION, evaluates it
with evaluate_composition.py (both as subprocesses), and reports whether its support precision and TV
fall inside the float32 run's 95% bootstrap intervals. Table on stdout; JSON in OUT_DIR, where the
rows of earlier runs are kept.

    python benchmarks/precision_quality.py                    # rows 1 and 8: M1/M2 (1,1) λ=20, MN (1,2,3)
    python benchmarks/precision_quality.py --rows 0 1 2 8
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sculpting.artefacts import composition_stem, evaluation_report  # noqa: E402
from sculpting.cli import configure, run_main, run_script  # noqa: E402
from sculpting.errors import UserError  # noqa: E402
from sculpting.recipes import SCALES  # noqa: E402
from sculpting.showcase import SHOWCASE, sample_command  # noqa: E402

SCALE = "cpu"  # the scale whose float32 results (results/<SCALE>/) are compared against
ROWS = [1, 8]  # showcase.SHOWCASE indices
PRECISION = "bfloat16"  # the precision compared with float32
EXPORT_DIR = "checkpoints"  # under the reference file names: the shipped checkpoints, or a reproduce.py EXPORT_DIR
OUT_DIR = "benchmarks/results/precision_quality"


def inside(value, interval):
    low, high = interval
    return low <= value <= high


def compare_row(index, config):
    script, models, observations, scales = SHOWCASE[index]
    stem = composition_stem(models, observations, scales)
    reference_dir = Path("results") / config["SCALE"]
    reference_path = reference_dir / evaluation_report(stem)
    if not reference_path.exists():
        # results/cpu is committed (git restores it); another scale's rows are a reproduce.py run's, written there
        # only when named (its default is runs/).
        remedy = (f"git checkout -- {reference_dir}" if config["SCALE"] == "cpu"
                  else f"python reproduce.py --scale {config['SCALE']} --out-dir {reference_dir}")
        raise UserError(f"{reference_path} is missing; run `{remedy}` first")
    reference = json.loads(reference_path.read_text())
    settings = json.loads((reference_dir / f"{stem}.json").read_text())
    # The float32 run's own sampler settings: the scale's flags, its step count and seed.
    flags = [*SCALES[config["SCALE"]]["sample_flags"], "--num-steps", str(settings["num_steps"]),
             "--seed", str(settings["seed"]), "--precision", config["PRECISION"]]
    command = sample_command(script, models, observations, scales, Path(config["EXPORT_DIR"]),
                             Path(config["OUT_DIR"]), reference["num_samples"], flags)
    start = time.perf_counter()
    run_script(command)
    seconds = time.perf_counter() - start
    sampled = composition_stem(models, observations, scales, settings["seed"])
    samples = Path(config["OUT_DIR"]) / f"{sampled}.pt"
    run_script(["evaluate_composition.py", str(samples)])
    report = json.loads((samples.parent / evaluation_report(sampled)).read_text())
    return {"composition": stem, "num_samples": report["num_samples"], "sampling_s": seconds,
            "float32": {key: reference[key] for key in
                        ("support_precision", "support_precision_ci", "tv_distance", "tv_distance_ci")},
            config["PRECISION"]: {"support_precision": report["support_precision"],
                                  "tv_distance": report["tv_distance"]},
            "precision_inside_ci": inside(report["support_precision"], reference["support_precision_ci"]),
            "tv_inside_ci": inside(report["tv_distance"], reference["tv_distance_ci"])}


def main(argv=None):
    config = configure(globals(), argv)
    for index in config["ROWS"]:
        if not 0 <= index < len(SHOWCASE):
            raise UserError(f"--rows: {index} is not a showcase row (0..{len(SHOWCASE) - 1})")
    results = [compare_row(index, config) for index in config["ROWS"]]
    precision = config["PRECISION"]
    print(f"\n{'composition':<48} {'float32 precision (CI)':>26} {precision:>9} {'in':>3}"
          f" {'float32 TV (CI)':>22} {precision:>9} {'in':>3}")
    for r in results:
        reference, reduced = r["float32"], r[precision]
        p_lo, p_hi = reference["support_precision_ci"]
        tv_lo, tv_hi = reference["tv_distance_ci"]
        print(f"{r['composition']:<48} {reference['support_precision']:>7.1%} ({p_lo:.1%}–{p_hi:.1%})"
              f" {reduced['support_precision']:>9.1%} {'yes' if r['precision_inside_ci'] else 'no':>3}"
              f" {reference['tv_distance']:>6.3f} ({tv_lo:.3f}–{tv_hi:.3f}) {reduced['tv_distance']:>9.3f}"
              f" {'yes' if r['tv_inside_ci'] else 'no':>3}")
    out = Path(config["OUT_DIR"]) / "precision_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Rows measured by earlier runs (e.g. another --rows at the same time) stay; a row measured again is replaced.
    kept = json.loads(out.read_text())["results"] if out.exists() else []
    measured = {r["composition"] for r in results}
    merged = [r for r in kept if r["composition"] not in measured] + results
    out.write_text(json.dumps({"settings": config, "results": merged}, indent=2) + "\n")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    run_main(main)
