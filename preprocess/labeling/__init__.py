"""Video pseudo labels from a vision-language model."""
