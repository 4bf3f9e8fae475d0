"""The report of a reproduce.py run: the results table of the showcase rows and the stages' wall times, as
<OUT_DIR>.md and in the documents that carry a copy of those tables between markers."""
import json
import os
from pathlib import Path

from custom_datasets import cell_name
from sculpting.artefacts import composition_stem, evaluation_report
from sculpting.composites import parse_model
from sculpting.reproduction.stages import CHAIN_GUIDANCE, chain_rows
from sculpting.showcase import SHOWCASE
from sculpting.targets import target_distribution

RESULTS_HEADER = ["| composition | λ | steps | n | support precision (95% CI) | TV to exact target (95% CI) | "
                  "TV of n exact draws | unrecognisable | plug-in target's support precision | grid |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
TIMES_HEADING = "\n\nStage wall times (this machine):\n\n"


def read_report(out_dir: Path, stem: str):
    """evaluate_composition.py's report on <out_dir>/<stem>.pt, or None where it has not run yet."""
    path = out_dir / evaluation_report(stem)
    return json.loads(path.read_text()) if path.exists() else None


def results_table(out_dir: Path, seed: int = 0) -> list:
    """One row per showcase composition, from its evaluation in out_dir (of samples drawn with `seed`); pending
    rows marked."""
    rows = list(RESULTS_HEADER)
    for _, models, observations, scales in SHOWCASE:
        stem = composition_stem(models, observations, scales, seed)
        name = f"{'/'.join(models)} y={tuple(observations)} | {', '.join(f'{s:g}' for s in scales)}"
        report = read_report(out_dir, stem)
        if report is None:
            rows.append(f"| {name} | – | – | pending | | | | | |")
            continue
        settings_path = out_dir / f"{stem}.json"
        settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
        notes = [settings["precision"]] if settings.get("precision", "float32") != "float32" else []
        notes += ["last step denoised"] if settings.get("denoise_last_step") else []
        name += f" ({', '.join(notes)})" if notes else ""
        name += f" | {settings.get('num_steps', '?')}"
        plug_in = f"{report['plug_in_target']['support_precision']:.1%}" if "plug_in_target" in report else "–"
        rows.append(f"| {name} | {report['num_samples']} | {_percent_ci(report, 'support_precision')} | "
                    f"{_tv_ci(report)} | "
                    f"{report['tv_of_exact_samples']['mean']:.3f} | {report['unrecognisable_share']:.1%} | "
                    f"{plug_in} | [png]({out_dir.name}/{stem}.png) |")
    return rows


def times_table(timings: dict) -> list:
    """The stages that took at least a second (exports are quicker), or [] if none did; timings.json's other
    entries (where each stage ran) are no times."""
    timed = [f"| {name} | {seconds:.0f} |" for name, seconds in timings.items()
             if isinstance(seconds, (int, float)) and seconds >= 1]
    return ["| stage | wall time (s) |", "|---|---|", *timed] if timed else []


def write_summary(out_dir: Path, scale: str, timings: dict, seed: int = 0, named: bool = False) -> Path:
    """<out_dir>.md beside out_dir (<RUN_DIR>/results.md by default): the results table, then stage times; also
    the tables between the markers named after out_dir (<!-- results:cpu --> ... <!-- /results:cpu --> for
    results/cpu) in README and docs/*.md, where they have them. `named`: the call named out_dir (--out-dir)."""
    rows = results_table(out_dir, seed)
    times = "\n".join(times_table(timings))
    path = out_dir.parent / f"{out_dir.name}.md"
    times_section = times_section_of(times, path)
    command = (f"python reproduce.py --scale {scale}" + (f" --seed {seed}" if seed else "")
               + (f" --out-dir {Path(os.path.relpath(out_dir))}" if named else ""))
    path.write_text(f"Written by `{command}` into `{Path(os.path.relpath(out_dir))}/` "
                    f"(README gives the full commands).\n\n" + "\n".join(rows) + (times_section or "\n"))
    for document in [Path("README.md"), *sorted(Path("docs").glob("*.md"))]:
        # A document's grid links start at its own folder (README: the root; docs/: one level down).
        links = f"]({out_dir.name}/", f"]({Path(os.path.relpath(out_dir, document.parent))}/"
        update_markers(document, f"results:{out_dir.name}", "\n".join(rows).replace(*links))
        if times:
            update_markers(document, f"times:{out_dir.name}", times)
    return path


def update_markers(document: Path, marker: str, text: str) -> None:
    """Replace what lies between <!-- marker --> and <!-- /marker --> in a Markdown document, if it has them."""
    if not document.exists():
        return
    content = document.read_text()
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start in content and end in content:
        before, rest = content.split(start, 1)
        after = rest.split(end, 1)[1]
        document.write_text(f"{before}{start}\n{text}\n{end}{after}")


# ---- the chained compositions (reproduce.py --group chains) ----

CHAIN_HEADER = ["| chain | a | composite | y | n | support precision (95% CI) | TV to exact target (95% CI) | "
                "TV of n exact draws | unrecognisable | plug-in target's support precision | TV to plug-in target | "
                "grid |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]


def chain_name(model, composite, observations) -> str:
    """a ⊗ (b ⊗ c), a ◑ (b ◑ c), (b ⊗ c) ◑ a, ...: what a chained row composes."""
    inner = f"({parse_model(composite).describe()})"
    return {(1, 2): f"{model} ⊗ {inner}", (1, 1): f"{model} ◑ {inner}", (2, 2): f"{inner} ◑ {model}"}[
        tuple(observations)]


def chain_table(out_dir: Path, seed: int = 0) -> list:
    """One row per chained composition (stages.chain_rows), from its evaluation in out_dir; pending rows marked."""
    rows = list(CHAIN_HEADER)
    for model, composite, observations in chain_rows():
        stem = composition_stem([model, composite], observations, [CHAIN_GUIDANCE], seed)
        name = f"{chain_name(model, composite, observations)} | {model} | {composite} | {tuple(observations)}"
        report = read_report(out_dir, stem)
        if report is None:
            rows.append(f"| {name} | pending | | | | | | | |")
            continue
        plug_in = report.get("plug_in_target")
        against_plug_in = f"{plug_in['support_precision']:.1%} | {_tv_ci(plug_in)}" if plug_in else "– | –"
        rows.append(f"| {name} | {report['num_samples']} | {_percent_ci(report, 'support_precision')} | "
                    f"{_tv_ci(report)} | {report['tv_of_exact_samples']['mean']:.3f} | "
                    f"{report['unrecognisable_share']:.1%} | {against_plug_in} | [png]({out_dir.name}/{stem}.png) |")
    return rows


def chain_comparison(out_dir: Path, three_way_dir: Path, seed: int = 0) -> list:
    """Each chain a ⊗ (b ⊗ c) beside the 3-way route's p(x | y = (1, 2, 3)) of the same base models: their exact
    targets (the same support, densities p_a q / (p_a + q), q ∝ p_b p_c / (p_b + p_c), against
    p_1 p_2 p_3 / (p_1 + p_2 + p_3)^2), the TV between the two targets, and each one's measured row."""
    _, three_way_models, three_way_observations, scales = next(row for row in SHOWCASE if row[2] == [1, 2, 3])
    three_way_stem = composition_stem(three_way_models, three_way_observations, scales, seed)
    three_way = read_report(three_way_dir, three_way_stem)
    three_way_target = target_distribution(three_way_models, [1, 2, 3])
    rows = ["| chain | its exact target | 3-way exact target | TV between the targets | chain: support precision; "
            "TV | 3-way (1, 2, 3): support precision; TV |", "|---|---|---|---|---|---|"]
    for model, composite, observations in chain_rows():
        if tuple(observations) != (1, 2) or parse_model(composite).operator != "x":
            continue
        target = target_distribution([model, composite], observations)
        stem = composition_stem([model, composite], observations, [CHAIN_GUIDANCE], seed)
        report = read_report(out_dir, stem)
        rows.append(f"| {chain_name(model, composite, observations)} | {_cells(target)} | "
                    f"{_cells(three_way_target)} | {_tv(target, three_way_target):.3f} | "
                    f"{_measured(report)} | {_measured(three_way)} |")
    return rows


def _cells(distribution) -> str:
    return ", ".join(f"{cell_name(cell)} {p:.1%}" for cell, p in distribution.items())


def _tv(first, second) -> float:
    return 0.5 * sum(abs(first.get(cell, 0.0) - second.get(cell, 0.0)) for cell in {*first, *second})


def _percent_ci(report, key) -> str:
    low, high = report[f"{key}_ci"]
    return f"{report[key]:.1%} ({low:.1%}–{high:.1%})"


def _tv_ci(report) -> str:
    low, high = report["tv_distance_ci"]
    return f"{report['tv_distance']:.3f} ({low:.3f}–{high:.3f})"


def _measured(report) -> str:
    return f"{report['support_precision']:.1%}; {report['tv_distance']:.3f}" if report else "pending"


def times_section_of(times: str, path: Path) -> str:
    """The stage-times section of the summary `path`: `times`, or, where this call has none (--summary-only over
    rows sampled elsewhere, or a run dir since deleted), the times an earlier call measured; "" if neither."""
    previous = path.read_text() if path.exists() else ""
    if not times and TIMES_HEADING in previous:
        return TIMES_HEADING + previous.split(TIMES_HEADING, 1)[1]
    return f"{TIMES_HEADING}{times}\n" if times else ""


def write_chain_summary(out_dir: Path, three_way_dir: Path, timings: dict, seed: int = 0) -> Path:
    """<out_dir>.md: the chained rows, their comparison with the 3-way route, the stages' wall times; also the
    tables between the markers chains:<out_dir name> and chains-vs-3way:<out_dir name> in README and docs/*.md."""
    rows, comparison = chain_table(out_dir, seed), chain_comparison(out_dir, three_way_dir, seed)
    path = out_dir.parent / f"{out_dir.name}.md"
    times_section = times_section_of("\n".join(times_table(timings)), path)
    path.write_text(f"Written by `python reproduce.py --group chains --out-dir {Path(os.path.relpath(out_dir))}` "
                    f"(README gives the full commands).\n\n" + "\n".join(rows) + "\n\nThe chains a ⊗ (b ⊗ c) "
                    f"against the 3-way route (`{Path(os.path.relpath(three_way_dir))}`):\n\n" + "\n".join(comparison)
                    + (times_section or "\n"))
    for document in [Path("README.md"), *sorted(Path("docs").glob("*.md"))]:
        links = f"]({out_dir.name}/", f"]({Path(os.path.relpath(out_dir, document.parent))}/"
        update_markers(document, f"chains:{out_dir.name}", "\n".join(rows).replace(*links))
        update_markers(document, f"chains-vs-3way:{out_dir.name}", "\n".join(comparison))
    return path
