"""Training: data loading, losses, the progressive schedule, the training loop, checkpoints and the SWD metric.

Entry points: `ganserve train` / `python -m ganserve.train` (cli.py), `ganserve eval`, and train() in trainer.py.
"""
