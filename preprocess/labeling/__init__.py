"""The VLM labeler: a pseudo label (win/lose), confidence and reasoning per video.

``prompts`` (the texts and the answer schema), ``config`` (settings, API key), ``labeler``
(the two-turn conversation through the google-genai client), ``cache``, ``retry``,
``reply`` (validation), ``results`` (per-video results, summary), ``cost`` (the dry run's
estimate) and ``cli`` (``python -m preprocess label`` / ``python -m preprocess.gemini``).
May import ``preprocess.video`` (durations for the cost) and the contract; never
``preprocess.synthetic``.
"""
