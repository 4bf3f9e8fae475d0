"""Named settings, as data: train_diffusion.py's presets and reproduce.py's scales.

A preset is a set of train_diffusion.py globals; a scale is everything reproduce.py passes its stages
(which preset, which classifier and sampler flags, how many steps where). Why each value is what it is:
docs/cpu_recipe_history.md (the cpu scale) and docs/reference.md (the paper scale).
"""
from sculpting.artefacts import CONDITIONAL_CLASSIFIER, THREE_WAY_CLASSIFIER
from samplers import SAMPLERS, Sampler

# train_diffusion.py --preset: named flag sets; explicit flags still win over a preset.
CPU_PRESET = {"EPOCHS": 12, "BATCH_SIZE": 128, "LR": 5e-3, "LR_SCHEDULE": "onecycle", "CHANNELS": [32, 64, 128, 128]}
PRESETS = {
    "cpu": CPU_PRESET,
    # Twice the epochs: fewer malformed digits. bfloat16 only where the CPU computes it natively; elsewhere
    # autocast is far slower than float32 (docs/performance.md). Sample it with --denoise-last-step.
    "cpu-24": {**CPU_PRESET, "EPOCHS": 24, "COMPILE": "on", "PRECISION": "auto"},
    "paper": {},
}

# The classifiers' trajectory pools at the cpu scale: on the fast sampling path, ending with a denoising step.
POOL_SAMPLING = ["--compile", "auto", "--precision", "auto", "--denoise-last-step"]
# Steps of each sampling stage, by sampler: the showcase rows (by number of base models), each base model alone,
# the joint classifiers' pools (base-model samples) and the conditional classifier's (guided compositions).
# PC: pools of base-model samples need fewer steps than the guided compositions, and the 3-way rows the
# reference's 500 (docs/cpu_recipe_history.md); heun-churn meets the PC rows with far fewer score evaluations
# (benchmarks/sampler_quality.py).
CPU_STEPS = {
    "pc": {"samples": {2: 250, 3: 500}, "individual": 250, "base_pools": 100, "composition_pools": 250},
    "heun-churn": {"samples": {2: 40, 3: 40}, "individual": 40, "base_pools": 40, "composition_pools": 40},
}
CPU_STEPS["heun"] = CPU_STEPS["heun-churn"]
# The cpu recipe's sampler as the sample scripts describe it (their default SIGMA_MIN and CHURN, the denoised last
# step): 79 score evaluations per sample.
CPU_SAMPLER = Sampler("heun-churn", 40, denoise_last_step=True, sigma_min=0.05, churn=40.0)
PAPER_STEPS = {sampler: {"samples": {2: 500, 3: 500}, "individual": 500, "base_pools": 500, "composition_pools": 500}
               for sampler in SAMPLERS}

SCALES = {
    "cpu": {
        "base_preset": "cpu-24", "half_precision": True,  # train_diffusion.py --preset of every base model
        # The grey models 1 and 2 train twice the preset's epochs: their malformed digits bounded the subdigits
        # row; the coloured models, read mostly by colour, meet their targets with the preset's
        # (docs/cpu_recipe_history.md).
        "base_epochs": {"1": 48, "2": 48},
        # Trajectory pools: sampling is most of classifier training on CPU, so one pool serves many steps;
        # a larger pool refreshed more often gives more distinct trajectories in about the same time
        # (docs/cpu_recipe_history.md).
        "classifier_flags": ["--pool-size", "512", "--pool-reuse", "50",
                             "--batch-size", "64", "--classifier-channels", "16", "32", "--test-samples", "100",
                             "--test-every", "50", "--ckpt-every", "50"],
        # The 1/2 classifier has to tell digits apart: with the reference's decay per step its step size is
        # spent too early (docs/cpu_recipe_history.md).
        "subdigits_classifier_flags": ["--lr-decay", "0.99"],
        # 3-way: a pooled trajectory served too often lets the joint classifier memorise its pool and its
        # joint table collapse onto the diagonal (docs/cpu_recipe_history.md). The non-terminal loss trains
        # on the reference's share of the steps with t <= 0.7.
        "three_way_flags": ["--pool-size", "256", "--pool-reuse", "50",
                            "--batch-size", "64", "--classifier-channels", "32", "48", "--test-samples", "100",
                            "--test-every", "50", "--ckpt-every", "50"],
        "conditional_flags": ["--pool-size", "64", "--pool-reuse", "50",
                              "--batch-size", "16", "--classifier-channels", "32", "32", "--test-samples", "32",
                              "--test-every", "25", "--ckpt-every", "25"],
        "classifier_steps": {THREE_WAY_CLASSIFIER: 300, CONDITIONAL_CLASSIFIER: 100},
        "chain_classifier_flags": [],  # classifier_flags' batch of 64 per model is the reference's for a chain
        "sampler": "heun-churn", "steps": CPU_STEPS, "pool_flags": POOL_SAMPLING,
        "sample_flags": ["--batch-size", "128", "--compile", "auto"], "precision": "auto",
        # Each base model alone, for the rows' plug-in targets (evaluate_composition --base-evaluations).
        "individual_samples": 256,
        "denoise_last_step": True,  # the last step denoised: cleaner digits from well-trained models
        "jobs": 2,  # two one-thread stages at a time on a 2-core machine
    },
    "paper": {
        "base_preset": "paper", "half_precision": False, "base_epochs": {},
        "classifier_flags": [], "subdigits_classifier_flags": [], "three_way_flags": [], "conditional_flags": [],
        # A chain classifier trains on 64 fresh trajectories per model and step (docs/reference.md §9).
        "chain_classifier_flags": ["--batch-size", "64", "--pool-size", "64"],
        "classifier_steps": {}, "sampler": "pc", "steps": PAPER_STEPS, "pool_flags": [],
        "sample_flags": ["--batch-size", "128"], "individual_samples": 512,
        "precision": "float32", "denoise_last_step": False, "jobs": 1,
    },
}
