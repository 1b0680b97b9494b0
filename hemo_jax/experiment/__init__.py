"""The experiment layer: the only code that reads a training config.

Entry points turn a config into an ``Experiment`` (``experiment.Experiment.from_config``)
and run its loop; ``models``, ``data`` and ``training`` below take typed arguments.
"""
