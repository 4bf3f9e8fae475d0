"""The showcase compositions of the results table, and the sample-script command that draws one.

Data shared by reproduce.py (which samples and evaluates them) and the benchmarks (which sample them
at other settings), so that the rows are declared once.
"""
from sculpting.artefacts import CONDITIONAL_CLASSIFIER, THREE_WAY_CLASSIFIER, reference_classifier_checkpoint
from sculpting.composites import pair_classifier_name

# (sample script, models, observations, guidance scales)
SHOWCASE = [  # most important first: an interrupted run has these
    ("sample_composition.py", ["M1", "M2"], [1, 2], [20.0]),
    ("sample_composition.py", ["M1", "M2"], [1, 1], [20.0]),
    ("sample_composition.py", ["M1", "M2"], [2, 2], [20.0]),
    ("sample_composition.py", ["1", "2"], [1, 2], [20.0]),
    ("sample_composition.py", ["M1", "M2"], [1, 2], [1.0]),
    ("sample_composition.py", ["M1", "M2"], [1, 1], [1.0]),
    ("sample_composition.py", ["M1", "M2"], [2, 2], [1.0]),
    ("sample_composition.py", ["1", "2"], [1, 2], [1.0]),
    ("sample_3way_composition.py", ["MN1", "MN2", "MN3"], [1, 2, 3], [10.0, 75.0]),
    ("sample_3way_composition.py", ["MN1", "MN2", "MN3"], [1, 1, 1], [10.0, 75.0]),
    ("sample_3way_composition.py", ["MN1", "MN2", "MN3"], [2, 2, 3], [10.0, 75.0]),
    ("sample_3way_composition.py", ["MN1", "MN2", "MN3"], [3, 3, 3], [10.0, 75.0]),
]


def sample_command(script, models, observations, scales, export_dir, out_dir, num_samples, flags):
    """The sample script's argv for a row, reading every checkpoint from `export_dir` under the reference's names."""
    command = [script, "--gen-ckpt-dir", str(export_dir), "--out-dir", str(out_dir), "--num-samples", str(num_samples),
               *flags]
    for k, (model, y) in enumerate(zip(models, observations), start=1):
        command += [f"--gen-idx-{k}", model, f"--y-{k}", str(y)]
    command += ["--guidance", f"{scales[0]:g}"]
    joint, conditional = classifier_checkpoints(models, export_dir)
    if script == "sample_3way_composition.py":
        command += ["--guidance-3", f"{scales[1]:g}", "--classifier-ckpt", joint,
                    "--conditional-classifier-ckpt", conditional]
    else:
        command += ["--classifier-ckpt", joint]
    return command


def classifier_checkpoints(models, export_dir):
    """(joint classifier, conditional classifier or None) of a row's base models, under the reference's names."""
    if len(models) == 3:
        return (reference_classifier_checkpoint(THREE_WAY_CLASSIFIER, export_dir),
                reference_classifier_checkpoint(CONDITIONAL_CLASSIFIER, export_dir))
    return reference_classifier_checkpoint(pair_classifier_name(*models), export_dir), None
