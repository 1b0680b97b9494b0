"""The offline world, for tests and the demo: nothing on the real path imports it.

``plan`` (who is in which video, with which label; the gestures), ``motion`` (137 keypoints
per frame), ``transcripts``, ``render`` (the mp4 from the keypoints), ``corpus`` (the files,
in the iMiGUE layout: ``python -m preprocess synth``), ``vlm_oracle`` (what the simulated
VLM answers) and ``vlm_sim`` (the simulated Gemini REST server). May import any real
module of preprocess (the corpus reader's settings file name, the labeler's video hash).
"""
