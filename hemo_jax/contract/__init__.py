"""The contract both halves of the project share: what one video's record holds
(`schema`), how records are stored (`shards`), the 137-point keypoint layout
(`keypoint_layout`), and atomic writes (`atomic`).

The preprocessing side (PyTorch) may import this package and nothing else of
`hemo_jax`. It imports numpy, msgpack and array_record only: never JAX, never torch.
"""
