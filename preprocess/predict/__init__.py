"""From video files to predictions and pages a person can read (``python -m preprocess
predict``): ``trained_run`` reads what a trained run needs from its files, ``command`` runs
preprocessing and the JAX side's commands, ``evidence`` and ``page`` make the HTML page."""
