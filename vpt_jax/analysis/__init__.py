"""Analysis: feature extractors and statistics, Fréchet distances (FID), and later attribution.

* `features`: extractors `features_fn(images) -> (B, D)` (FID Inception-v3, a ViT's own features)
  and batched extraction at a fixed batch shape.
* `statistics`: mean/covariance of a dataset's features, cached as `.npz` (`mu`, `sigma`).
* `frechet`: the Fréchet distance between two statistics.
"""
