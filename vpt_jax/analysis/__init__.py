"""Analysis: Fréchet distance between datasets, the VPT-or-FT quadrants and advisor, attribution.

* `features`, `statistics`, `frechet`: Inception-v3 (or ViT) features, their mean and covariance,
  and the Fréchet distance between two statistics.
* `extractors`, `distance`, `fid_table`, `tasks`: each dataset's distance to the pretraining data.
* `quadrants`, `advisor`: the task-disparity x FID quadrants and the recommendation they imply.
* `attribution`, `attribution_paths`, `attribution_plots`, `attribution_figures`: Integrated
  Gradients and GradCAM, and the FT-vs-VPT comparison figures.
"""
