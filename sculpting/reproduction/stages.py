"""The stage graph of reproduce.py: what each stage runs, what it writes, and which stages it reads from.

Base models (MN1, MN2, MN3, M1, M2, subdigits 1 and 2) -> export under the reference names -> 3-way joint ->
3-way conditional, and the 2-model classifiers (M1/M2 and 1/2) -> each base model alone and the showcase
compositions, sampled -> evaluated. Stages are declared in priority order. Training runs write to RUN_DIR;
their final checkpoints are exported to EXPORT_DIR under the reference file names, and every later stage
reads them from there, so the results describe exactly the exported files.
"""
from dataclasses import dataclass
from pathlib import Path

import torch

from sculpting.artefacts import (CONDITIONAL_CLASSIFIER, JOINT_CLASSIFIER, REFERENCE_EPOCH, REFERENCE_STEPS,
                       SUBDIGITS_CLASSIFIER, THREE_WAY_CLASSIFIER, base_model_checkpoint, classifier_checkpoint,
                       composition_stem, evaluation_report, individual_stem, provenance_sidecar,
                       reference_classifier_checkpoint, train_state)
from sculpting.composites import pair_classifier_name, parse_model
from sculpting.checkpoints import atomic_save, atomic_write_text, half_state_dict, is_shipped, record_shipped, refuse_shipped
from sculpting.recipes import PRESETS
from sculpting.reproduction.runner import Stage
from sculpting.showcase import SHOWCASE, sample_command


@dataclass(frozen=True)
class Plan:
    """What a reproduce.py run makes, and where."""
    scale: dict  # recipes.SCALES[<scale>]
    run_dir: Path
    export_dir: Path
    out_dir: Path
    seed: int
    sampler: str
    precision: str  # of the showcase samples
    denoise_last_step: bool  # of the showcase samples
    num_samples: int  # of each showcase row
    num_steps: int = None  # of every sample; None: the scale's for the sampler
    replace_shipped: bool = False  # the exports may replace the files shipped with the repository


def final_epoch(preset: str, epochs: int = None) -> int:
    """The epoch of the base-model checkpoint that is exported: the reference's, or the last epoch of a shorter
    run (the preset's epochs unless `epochs` overrides them; a preset without them trains the reference's)."""
    epochs = epochs or PRESETS[preset].get("EPOCHS")
    return min(epochs - 1, REFERENCE_EPOCH) if epochs else REFERENCE_EPOCH


def export_checkpoint(source: Path, target: Path, half: bool, replace_shipped=False):
    """Copy a checkpoint (in half precision if `half`) and its provenance sidecar, if any. Replacing a shipped file
    (only with `replace_shipped`) also rewrites its line, and its sidecar's, in the shipped manifest."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    shipped = is_shipped(target)
    atomic_save(half_state_dict(state) if half else state, target, replace_shipped)
    sidecar, target_sidecar = provenance_sidecar(source), provenance_sidecar(target)
    if sidecar.is_file():
        atomic_write_text(target_sidecar, sidecar.read_text(), replace_shipped)
    elif target_sidecar.exists():  # an earlier export's sidecar would describe another classifier
        if not replace_shipped:
            refuse_shipped([target_sidecar], "choose another --export-dir")
        target_sidecar.unlink()
    if shipped:
        record_shipped([target, target_sidecar])


def stage_graph(plan: Plan, selects) -> list:
    """The stages of a run, in priority order, the longest chain (MN base models -> 3-way joint -> conditional)
    first; `selects(name)` says whether --only lets a stage run (an evaluation uses the plug-in target only
    where the base models' own evaluations exist or are made in this call)."""
    settings, run_dir, export_dir, out_dir = plan.scale, plan.run_dir, plan.export_dir, plan.out_dir
    steps_of = settings["steps"][plan.sampler]
    seed = ["--seed", str(plan.seed)]
    stages = []

    def stage(name, outputs, command=None, action=None, after=(), inputs=(), kind=None):
        stages.append(Stage(name, [Path(p) for p in outputs], command, action, tuple(after), tuple(inputs), kind))
        return name

    def pool_flags(pools):
        return ["--sampler", plan.sampler, "--trajectory-steps", str(steps_of[pools]), *settings["pool_flags"]]

    def train_base_model(g):
        preset, epochs = settings["base_preset"], settings["base_epochs"].get(g)
        final = run_dir / base_model_checkpoint(g, final_epoch(preset, epochs))
        exported = export_dir / base_model_checkpoint(g)
        resume = ["--resume"] if (run_dir / train_state(g)).exists() else ["--overwrite"]
        trained = stage(f"base {g}", [final], ["train_diffusion.py", "--gen-idx", g, "--ckpt-dir", str(run_dir),
                                               "--preset", preset, *seed, *resume,
                                               *(["--epochs", str(epochs)] if epochs else [])], kind="base")
        return stage(f"export {g}", [exported], after=[trained], inputs=[final],
                     action=lambda: export_checkpoint(final, exported, settings["half_precision"],
                                                      plan.replace_shipped))

    def train_classifier(name, classifier_name, command, after):
        """Train for the scale's number of steps; export under the reference step's file name."""
        steps = settings["classifier_steps"].get(classifier_name, REFERENCE_STEPS[classifier_name])
        trained = run_dir / classifier_checkpoint(classifier_name, steps)
        exported = Path(reference_classifier_checkpoint(classifier_name, export_dir))
        stage(name, [trained], [*command, "--steps", str(steps), "--gen-ckpt-dir", str(export_dir),
                                "--ckpt-dir", str(run_dir), *seed, "--overwrite"], after=after, kind="classifier")
        return stage(f"export {name}", [exported], after=[name], inputs=[trained],
                     action=lambda: export_checkpoint(trained, exported, settings["half_precision"],
                                                      plan.replace_shipped))

    exports = {g: train_base_model(g) for g in ["MN1", "MN2", "MN3"]}
    three_way_bases = list(exports.values())
    three_way = train_classifier("3-way classifier", THREE_WAY_CLASSIFIER,
                                 ["train_3way_classifier.py", *pool_flags("base_pools"), *settings["three_way_flags"]],
                                 after=three_way_bases)
    conditional = train_classifier("3-way conditional classifier", CONDITIONAL_CLASSIFIER,
                                   ["train_3way_conditional_classifier.py", *pool_flags("composition_pools"),
                                    *settings["conditional_flags"],
                                    "--classifier-ckpt", reference_classifier_checkpoint(THREE_WAY_CLASSIFIER,
                                                                                         export_dir)],
                                   after=[three_way, *three_way_bases])
    exports.update({g: train_base_model(g) for g in ["M1", "M2"]})
    binary = train_classifier("classifier M1/M2", JOINT_CLASSIFIER,
                              ["train_classifier.py", *pool_flags("base_pools"), *settings["classifier_flags"]],
                              after=[exports["M1"], exports["M2"]])
    exports.update({g: train_base_model(g) for g in ["1", "2"]})
    subdigits = train_classifier("classifier 1/2", SUBDIGITS_CLASSIFIER,
                                 ["train_classifier.py", "--gen-idx-1", "1", "--gen-idx-2", "2",
                                  "--classifier-name", SUBDIGITS_CLASSIFIER, *pool_flags("base_pools"),
                                  *settings["classifier_flags"], *settings["subdigits_classifier_flags"]],
                                 after=[exports["1"], exports["2"]])

    sample_flags = [*settings["sample_flags"], "--precision", plan.precision, "--sampler", plan.sampler, *seed,
                    "--denoise-last-step" if plan.denoise_last_step else "--no-denoise-last-step"]
    # Each base model alone, evaluated: the rows' plug-in targets (what these base models allow).
    base_evaluations = {}
    for g in exports:
        alone = individual_stem(g, plan.seed)
        individual = out_dir / f"{alone}.pt"
        sampled = stage(f"sample individual {g}", [individual], [
            "sample_individual_model.py", "--gen-idx", g, "--gen-ckpt-dir", str(export_dir), "--out-dir",
            str(out_dir), "--num-samples", str(settings["individual_samples"]), *sample_flags,
            "--num-steps", str(plan.num_steps or steps_of["individual"])], after=[exports[g]], kind="sample")
        base_evaluations[g] = stage(f"evaluate individual {g}", [out_dir / evaluation_report(alone)],
                                    ["evaluate_composition.py", str(individual)], after=[sampled], kind="evaluate")
    # The 3-way rows, the longest, first: in a parallel run the last stages then end close together.
    for script, models, observations, scales in sorted(SHOWCASE, key=lambda row: len(row[1]) < 3):
        stem = composition_stem(models, observations, scales, plan.seed)
        classifiers = [three_way, conditional] if len(models) == 3 else [subdigits if models == ["1", "2"] else binary]
        steps = plan.num_steps or steps_of["samples"][len(models)]
        sampled = stage(f"sample {stem}", [out_dir / f"{stem}.pt"],
                        sample_command(script, models, observations, scales, export_dir, out_dir, plan.num_samples,
                                       [*sample_flags, "--num-steps", str(steps)]),
                        after=[*(exports[g] for g in models), *classifiers], kind="sample")
        individual_evaluations = [out_dir / evaluation_report(individual_stem(g, plan.seed)) for g in models]
        plug_in = all(selects(base_evaluations[g]) or path.exists() for g, path in zip(models, individual_evaluations))
        stage(f"evaluate {stem}", [out_dir / evaluation_report(stem)],
              ["evaluate_composition.py", str(out_dir / f"{stem}.pt"),
               *(["--base-evaluations", *map(str, individual_evaluations)] if plug_in else [])],
              after=[sampled, *(base_evaluations[g] for g in models)], kind="evaluate")
    return stages


# ---- chained compositions (docs/reference.md §9) ----

CHAIN_MODELS = ["MN1", "MN2", "MN3"]
CHAIN_OBSERVATIONS = [(1, 1), (1, 2), (2, 2)]
CHAIN_PREFIX = "chains: "  # of every chain stage's name: the group shares its run dir's logs and timings.json
CHAIN_GUIDANCE = 20.0  # of the chained compositions and inside each composite, as the reference samples them


def chain_classifier_name(model, composite) -> str:
    return f"chain_{model}_{composite}"


def chain_rows() -> list:
    """(a, composite, observations) of the reference's sweep: each MN model against the composites of the other
    two (their harmonic mean, and each without the other), y in CHAIN_OBSERVATIONS: 27 rows."""
    rows = []
    for model in CHAIN_MODELS:
        first, second = [other for other in CHAIN_MODELS if other != model]
        for composite in (f"{first}x{second}", f"{first}-{second}", f"{second}-{first}"):
            rows += [(model, composite, observations) for observations in CHAIN_OBSERVATIONS]
    return rows


def chain_graph(plan: Plan, base_dir: Path) -> list:
    """The stages of the chained compositions, on the base models in `base_dir`: the MN pairs' joint classifiers
    (the composites' own), each composite and each base model sampled alone and evaluated (the plug-in targets),
    the 9 chain classifiers (a against a composite of the other two), then the 27 chained compositions, sampled and
    evaluated. Classifiers are written to <RUN_DIR>/chains and read from there."""
    settings, out_dir, chain_dir = plan.scale, plan.out_dir, plan.run_dir / "chains"
    steps_of = settings["steps"][plan.sampler]
    seed = ["--seed", str(plan.seed)]
    guidance = ["--composite-guidance", f"{CHAIN_GUIDANCE:g}", "--composite-classifier-dir", str(chain_dir)]
    steps = REFERENCE_STEPS[JOINT_CLASSIFIER]  # the composites read their pair classifier at this step
    stages = []

    def stage(name, outputs, command, after=(), kind=None):
        stages.append(Stage(CHAIN_PREFIX + name, [Path(p) for p in outputs], command, None, tuple(after), (), kind))
        return stages[-1].name

    def train(name, classifier_name, models, pools):
        return stage(name, [chain_dir / classifier_checkpoint(classifier_name, steps)], [
            "train_classifier.py", "--gen-idx-1", models[0], "--gen-idx-2", models[1], "--classifier-name",
            classifier_name, "--gen-ckpt-dir", str(base_dir), "--ckpt-dir", str(chain_dir), "--steps", str(steps),
            "--sampler", plan.sampler, "--trajectory-steps", str(steps_of[pools]), *settings["pool_flags"],
            *settings["classifier_flags"], *settings["chain_classifier_flags"], *guidance, *seed, "--overwrite"],
            after=[pair_classifiers[parse_model(m).pair] for m in models if parse_model(m)], kind="classifier")

    # A sample's record holds its composites' SHA-256: a rerun after a classifier was remade replaces it.
    sample_flags = [*settings["sample_flags"], "--precision", plan.precision, "--sampler", plan.sampler, *seed,
                    "--denoise-last-step" if plan.denoise_last_step else "--no-denoise-last-step",
                    "--gen-ckpt-dir", str(base_dir), "--out-dir", str(out_dir), *guidance, "--overwrite"]

    def alone(model):
        """Sample a base model or a composite alone and evaluate it: its cells for the plug-in targets."""
        stem = individual_stem(model, plan.seed)
        composite = parse_model(model)
        sampled = stage(f"sample individual {model}", [out_dir / f"{stem}.pt"], [
            "sample_individual_model.py", "--gen-idx", model, "--num-samples", str(settings["individual_samples"]),
            *sample_flags, "--num-steps", str(plan.num_steps or steps_of["individual"])],
            after=[pair_classifiers[composite.pair]] if composite else [], kind="sample")
        return stage(f"evaluate individual {model}", [out_dir / evaluation_report(stem)],
                     ["evaluate_composition.py", str(out_dir / f"{stem}.pt")], after=[sampled], kind="evaluate")

    pair_classifiers = {}
    for k, first in enumerate(CHAIN_MODELS):
        for second in CHAIN_MODELS[k + 1:]:
            pair_classifiers[(first, second)] = train(f"classifier {first}/{second}",
                                                      pair_classifier_name(first, second), [first, second],
                                                      "base_pools")
    # The chain classifiers, the longest stages, first; then each model alone (the plug-in targets), then the rows.
    chains = dict.fromkeys((model, composite) for model, composite, _ in chain_rows())
    chain_classifiers = {(model, composite): train(f"chain classifier {model}/{composite}",
                                                   chain_classifier_name(model, composite), [model, composite],
                                                   "composition_pools")
                         for model, composite in chains}
    evaluated = {model: alone(model) for model in [*CHAIN_MODELS, *dict.fromkeys(c for _, c in chains)]}
    for model, composite, observations in chain_rows():
        stem = composition_stem([model, composite], observations, [CHAIN_GUIDANCE], plan.seed)
        classifier = chain_dir / classifier_checkpoint(chain_classifier_name(model, composite), steps)
        sampled = stage(f"sample {stem}", [out_dir / f"{stem}.pt"], [
            "sample_composition.py", "--gen-idx-1", model, "--gen-idx-2", composite, "--y-1", str(observations[0]),
            "--y-2", str(observations[1]), "--guidance", f"{CHAIN_GUIDANCE:g}", "--classifier-ckpt", str(classifier),
            "--num-samples", str(plan.num_samples), *sample_flags,
            "--num-steps", str(plan.num_steps or steps_of["samples"][2])],
            after=[chain_classifiers[(model, composite)]], kind="sample")
        stage(f"evaluate {stem}", [out_dir / evaluation_report(stem)], [
            "evaluate_composition.py", str(out_dir / f"{stem}.pt"), "--base-evaluations",
            *(str(out_dir / evaluation_report(individual_stem(m, plan.seed))) for m in (model, composite))],
            after=[sampled, evaluated[model], evaluated[composite]], kind="evaluate")
    return stages
