"""The library the scripts share: settings and flags (cli), checkpoints and artefact names, the training loops,
sampling and evaluation plumbing, exact targets, and the reproduction pipeline. Nothing here imports a script, and
models/ and samplers/ import nothing from here."""
