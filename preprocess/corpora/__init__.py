"""Corpus adapters: a corpus on disk → one ``ManifestRow`` per video, then its record.

``imigue``: the iMiGUE layout (labels CSV, OpenPose skeleton folders, videos, transcripts,
split protocols); the synthetic corpus uses the same layout, and ``synthetic`` reads what
only it has (its settings file). May import ``preprocess.video`` and
``preprocess.keypoints`` and the contract; never ``preprocess.synthetic``.
"""
