r"""One VTAB-1k run of the study's setting: ViT-B/16 (ImageNet-21k) on a task with a strategy.

    python -m vpt_jax.main --config configs/vtab.py:task=cifar100,strategy=vpt_deep \
        --config.model.checkpoint=/path/to/ViT-B_16.npz --config.data.data_dir=~/tensorflow_datasets \
        --workdir runs/cifar100_vpt_deep

Arguments (comma-separated key=value): task (a VTAB-1k task, default cifar100), strategy (default
vpt_deep), prompts (prompt length; default: the per-task length the paper's numbers imply), recipe
(reference, the default: trains as the official VPT code did for the paper; or clean; see the
README's "Training recipes"). Defaults follow the paper: prompt-style strategies use SGD (momentum
0.9), lr 0.25 x batch/256 here as a starting point (the study searches lr x wd), batch 64, 10
warmup epochs; `full` (the finetune grid) uses AdamW with lr 1e-3 x batch/256, weight decay 1e-4
(the reference recipe trains it as the official code's 0.01), batch 128 and 5 warmup epochs under
`reference`; 100 epochs, cosine decay. Train on train800val200, evaluate on test every epoch (loss
curves). Expected: VPT-deep on cifar100 reaches ~78% test top-1 (paper).
"""

from __future__ import annotations

from vpt_jax import recipe
from vpt_jax.cli import ConfigArgumentError, config_arguments, config_int
from vpt_jax.config import base_config
from vpt_jax.data.vtab import ALIASES, VTAB_TASKS
from vpt_jax.tuning.strategies import FINETUNE_GRID, STRATEGIES, get_strategy


def get_config(arg: str | None = None):
    args = config_arguments(arg, ("task", "strategy", "prompts", "recipe"))
    task = ALIASES.get(args.get("task", "cifar100"), args.get("task", "cifar100"))
    c = base_config()
    c.recipe = args.get("recipe", recipe.REFERENCE)
    if c.recipe not in recipe.RECIPES:
        raise ConfigArgumentError(f"recipe={c.recipe!r}: use one of {', '.join(recipe.RECIPES)}")
    c.data.dataset = f"vtab/{task}"  # an unknown task is reported (with the valid names) at start
    c.strategy.name = args.get("strategy", "vpt_deep")
    paper_length = VTAB_TASKS[task].prompt_length if task in VTAB_TASKS else 10
    c.strategy.num_prompts = config_int("prompts", args.get("prompts", str(paper_length)))
    if c.strategy.name not in STRATEGIES:
        return c  # an unknown strategy is reported (with the valid names) at start
    grid = get_strategy(c.strategy.name).grid
    if grid == FINETUNE_GRID:
        c.optimizer.lr = 0.001
        c.optimizer.weight_decay = 0.0001
        if c.recipe == recipe.CLEAN:
            c.model.dropout_rate = 0.1  # (the reference recipe's own dropout is 0.1)
    for field, section in recipe.GRID_FIELDS.items():
        value = recipe.GRID_SETTINGS[c.recipe].get(grid, {}).get(field)
        if value is not None:
            c[section][field] = value
    return c
