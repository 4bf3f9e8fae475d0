"""The library the scripts share: settings and flags (cli), checkpoints, datasets' artefact names, the training
loops, sampling and evaluation plumbing, exact targets, the reproduction pipeline. Nothing here imports a script;
models/ and samplers/ import only sculpting.sde from it."""
