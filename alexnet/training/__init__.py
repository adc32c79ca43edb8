"""Training: the loop (``loop.run``), the run's pieces (``session``), one epoch and one
evaluation pass (``engine``), the paper's SGD and schedules (``optim``), checkpoints,
fine-tuning and what TensorBoard shows (``board``).

Import the modules themselves (``from alexnet.training.loop import run``): the package imports
nothing, so that no import of it can close a cycle.
"""
