"""Fréchet distance between datasets: how far each task's images lie from the pretraining data.

From the network to the table, each module one step:

* `inception`: the FID Inception-v3 (the TensorFlow 2015-12-05 graph as pytorch-fid ports it).
* `inception_weights`: its weights: pytorch-fid's `.pth` converted to `.npz` (a command), loaded.
* `features`: jitted feature functions (Inception pool3, a ViT's pre-logits) and batched extraction.
* `extractors`: named feature spaces (network + weight-file fingerprint) and their flags.
* `statistics`: a dataset's feature mean and covariance, and their `.npz` files.
* `frechet`: the Fréchet distance between two statistics.
* `distance`: each dataset's FID to a reference, with cached statistics (a command).
* `table`: the FID table as CSV and text, as the quadrants and the advisor read it.
"""
