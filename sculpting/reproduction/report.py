"""The report of a reproduce.py run: the results table of the showcase rows and the stages' wall times, as
<OUT_DIR>.md and in the documents that carry a copy of those tables between markers."""
import json
import os
from pathlib import Path

from sculpting.artefacts import composition_stem, evaluation_report
from sculpting.showcase import SHOWCASE

RESULTS_HEADER = ["| composition | λ | steps | n | support precision (95% CI) | TV to exact target (95% CI) | "
                  "TV of n exact draws | unrecognisable | plug-in target's support precision | grid |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
TIMES_HEADING = "\n\nStage wall times (this machine):\n\n"


def results_table(out_dir: Path, seed: int = 0) -> list:
    """One row per showcase composition, from its evaluation in out_dir (of samples drawn with `seed`); pending
    rows marked."""
    rows = list(RESULTS_HEADER)
    for _, models, observations, scales in SHOWCASE:
        stem = composition_stem(models, observations, scales, seed)
        name = f"{'/'.join(models)} y={tuple(observations)} | {', '.join(f'{s:g}' for s in scales)}"
        report_path = out_dir / evaluation_report(stem)
        if not report_path.exists():
            rows.append(f"| {name} | – | – | pending | | | | | |")
            continue
        report = json.loads(report_path.read_text())
        settings_path = out_dir / f"{stem}.json"
        settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
        notes = [settings["precision"]] if settings.get("precision", "float32") != "float32" else []
        notes += ["last step denoised"] if settings.get("denoise_last_step") else []
        name += f" ({', '.join(notes)})" if notes else ""
        name += f" | {settings.get('num_steps', '?')}"
        lo, hi = report["support_precision_ci"]
        tv_lo, tv_hi = report["tv_distance_ci"]
        plug_in = f"{report['plug_in_target']['support_precision']:.1%}" if "plug_in_target" in report else "–"
        rows.append(f"| {name} | {report['num_samples']} | {report['support_precision']:.1%} ({lo:.1%}–{hi:.1%}) | "
                    f"{report['tv_distance']:.3f} ({tv_lo:.3f}–{tv_hi:.3f}) | "
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
    previous = path.read_text() if path.exists() else ""
    times_section = f"{TIMES_HEADING}{times}\n" if times else ""
    if not times and TIMES_HEADING in previous:
        # A run dir without timings (--summary-only over rows sampled elsewhere, or a run dir since deleted)
        # keeps the times an earlier call measured.
        times_section = TIMES_HEADING + previous.split(TIMES_HEADING, 1)[1]
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
