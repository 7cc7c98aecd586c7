"""Analysis: where a task lies relative to pretraining, who wins there, and what each model looks at.

Two wings and the study's conclusion between them:

* `fid/`: Fréchet distance between datasets: the FID Inception-v3 and its weights, feature
  statistics, the distance, each dataset's FID to the pretraining data (`python -m
  vpt_jax.analysis.fid.distance`) and the FID table.
* `quadrants`: the task-disparity x FID quadrants, marked by who won in a study (`python -m
  vpt_jax.analysis.quadrants`).
* `findings`: the paper's findings as a rule (disparity, FID, training size -> VPT or FT, and why).
* `advisor`: that rule applied to a user's dataset, its FID measured (`python -m
  vpt_jax.analysis.advisor`).
* `attribution/`: Integrated Gradients and GradCAM, and the FT-vs-VPT comparison figures
  (`python -m vpt_jax.analysis.attribution.figures`).

Dataset names are parsed by the data layer (`vpt_jax.data.parse_dataset`), which also says a
task's group and disparity.
"""
