"""The PyTorch side: a corpus of interview videos → raw shards of ``VideoRecord``s.

By concern, each package saying what it may import:

- ``corpora``: corpus adapters (iMiGUE layout, the synthetic corpus's settings) → one
  ``ManifestRow`` per video and the records' corpus fields;
- ``video``: decode, detect people, track the interviewee, cut the crops;
- ``keypoints``: OpenPose's JSON (the 137-point layout) and the OpenPose binary;
- ``labeling``: the VLM labeler (prompts, client, cache, retries, replies, results, cost)
  and its command line;
- ``synthetic``: the offline world for tests and the demo (generator, renderer,
  transcripts, the simulated VLM and its oracle); no real step imports it;
- ``steps``: the per-video steps, one implementation shared by ``run`` and any distributed
  engine; ``run``: the local orchestration (threads, resume, status); ``shards``: the raw
  shard set writer; ``__main__``: the command line.

Only ``hemo_jax.contract`` is imported from the JAX side.
"""
