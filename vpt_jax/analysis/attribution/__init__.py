"""Attribution for finetuned and prompt-tuned ViTs, by `jax.grad`, and the FT-vs-VPT figures.

* `classifier`: what both methods share: model inputs from pixels, predictions, target classes.
* `integrated_gradients`: Integrated Gradients with captum's rules and its completeness check.
* `quadrature`: the rules' interpolation points and weights, identical to captum's.
* `baselines`: IG's start points in model space (`zeros`, `black`, `blur`, an array).
* `gradcam`: GradCAM on one block's patch tokens, prompt tokens dropped.
* `comparison`: where FT and VPT disagree, and the (input, FT map, VPT map) figure rows.
* `figures`: the command that draws those figures from two task artifacts.
"""
