"""Training: data loading, losses, the progressive schedule, the training loop, checkpoints and the SWD metric.

Entry points: `ganserve train` / `python -m ganserve.train` (cli.py), `ganserve eval`, and train() in trainer.py.
A run is resolved first (run.py: config, run directory, schedule, resumed checkpoint); trainer.py's loop then
composes data.py, networks.py, step.py with a loss from losses.py, outputs.py and checkpoint.py.
"""
