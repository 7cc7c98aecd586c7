"""Training recipes: `clean` (vpt_jax's own) and `reference` (the official VPT code's), as data.

A recipe is a named bundle of settings (`config.recipe`). Every setting it governs is a config
field whose default is "unset" (None, or "" for names); `resolve(config)` fills each unset field
from the recipe and leaves every field the user set alone, so `--config.recipe=reference` switches
the bundle and `--config.model.gelu_approximate=True` still overrides one part of it.

The `reference` recipe is what the code behind the paper's numbers does (KMnP/vpt and its fork
ChengHan111/VPT-or-FT, whose solver is the same): read from `src/solver/optimizer.py`,
`src/solver/lr_scheduler.py`, `src/engine/trainer.py`, `src/models/vit_models.py`,
`src/models/mlp.py`, `src/models/vit_backbones/vit.py` and `src/data/datasets/tf_dataset.py`.
`tests/test_reference_recipe.py` trains against a PyTorch re-expression of that solver, step for
step. The README's "Training recipes" table explains each difference.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from vpt_jax.errors import UserError

CLEAN, REFERENCE = "clean", "reference"

# section.field -> value, per recipe. A field listed here defaults to unset in `base_config`.
RECIPES: dict[str, dict[str, Any]] = {
    CLEAN: {
        "model.gelu_approximate": True,  # tanh GELU, as the google checkpoints were trained
        "model.dropout_rate": 0.0,  # no backbone dropout
        "model.dropout_after_attention": True,  # google's dropout sites (if dropout is set)
        "model.head_init": "zeros",  # zero head, as google's fine-tuning code
        "data.normalization": "inception",  # [-1, 1], what the checkpoints expect
        "strategy.prompt_dropout": 0.0,  # no dropout on prompts
        "optimizer.eps": 1e-8,  # optax's AdamW epsilon
        "optimizer.schedule_unit": "step",  # warmup-cosine evaluated at every step
        "optimizer.adamw": "optax",  # optax.adamw (decay decoupled, on the pre-step params)
        "optimizer.decay_set": "strategy",  # the strategy's labels (biases undecayed in partial)
        "optimizer.fixed_adamw_decay": 0.0,  # AdamW uses the configured weight decay
        "optimizer.sgd_when_no_decay": False,  # AdamW stays AdamW at weight decay 0
    },
    REFERENCE: {
        "model.gelu_approximate": False,  # torch F.gelu (exact erf)
        "model.dropout_rate": 0.1,  # the VPT code's ViT config; runs only where the backbone trains
        "model.dropout_after_attention": False,  # its attention output is dropped at the attention rate
        "model.head_init": "vpt",  # kaiming_normal(fan_out) weights, bias -log(99)
        "data.normalization": "imagenet",  # /255, ImageNet mean/std (tf_dataset.py)
        "strategy.prompt_dropout": None,  # 0.1 on deep prompts, 0 on shallow ones (the paper's runs)
        "optimizer.eps": 1e-6,  # its own AdamW's default
        "optimizer.schedule_unit": "epoch",  # LambdaLR stepped once per epoch; epoch 0 at rate 0
        "optimizer.adamw": "vpt",  # its own AdamW: eps on sqrt(v), decay after the Adam step
        "optimizer.decay_set": "vpt",  # SGD: all but the head bias; AdamW: names without "bias"
        "optimizer.fixed_adamw_decay": 0.01,  # AdamW ignores the configured decay, uses 0.01
        "optimizer.sgd_when_no_decay": True,  # AdamW with weight decay 0 silently runs SGD
    },
}
GOVERNED = tuple(RECIPES[CLEAN])
# What a backbone's pretraining fixes (`model.family`, vpt_jax/train/backbone.py): these fill unset
# fields before the recipe does. The self-supervised ViTs and Swin were pretrained with exact GELU,
# no dropout and ImageNet mean/std inputs, so even the clean recipe keeps those for them.
_PRETRAINED_LIKE_TORCH = {
    "model.gelu_approximate": False,
    "model.dropout_rate": 0.0,
    "data.normalization": "imagenet",
}
BACKBONE_DEFAULTS: dict[str, dict[str, Any]] = {
    "vit": {},
    "mae": _PRETRAINED_LIKE_TORCH,
    "moco_v3": _PRETRAINED_LIKE_TORCH,
    "swin": _PRETRAINED_LIKE_TORCH,
}

# A study's per-grid training settings (`study.grids.<grid>.<field>`, unset by default): what the
# paper's runs used (VPT-or-FT's README commands and base configs: FT batch 128 with 5 warmup
# epochs, prompt methods batch 64 with 10). Unset under `clean`: the run template's.
GRID_SETTINGS: dict[str, dict[str, dict[str, int]]] = {
    CLEAN: {},
    REFERENCE: {
        "finetune": {"batch_size": 128, "warmup_epochs": 5},
        "prompt": {"batch_size": 64, "warmup_epochs": 10},
    },
}
GRID_FIELDS = {"batch_size": "train", "warmup_epochs": "optimizer"}  # field -> run section
DEEP_PROMPT_DROPOUT = 0.1  # the reference recipe's prompt dropout on deep prompts

CHOICES = {
    "model.head_init": ("zeros", "vpt"),
    "optimizer.schedule_unit": ("step", "epoch"),
    "optimizer.adamw": ("optax", "vpt"),
    "optimizer.decay_set": ("strategy", "vpt"),
}


def check_recipe(name: str) -> None:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; use one of: {', '.join(RECIPES)}")


def resolve(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of a run config with every unset recipe field taken from `c.recipe`.

    The backbone's `BACKBONE_DEFAULTS` come before the recipe's (an unknown family is left for
    `vpt_jax.train.backbone` to refuse).

    Idempotent; raises a one-line `UserError` for an unknown recipe or an unknown value of one of
    its name fields.
    """
    check_recipe(c.recipe)
    out = ml_collections.ConfigDict(c.to_dict())
    family = out.model.get("family", "vit")
    defaults = {**RECIPES[c.recipe], **BACKBONE_DEFAULTS.get(family, {})}
    for field, value in defaults.items():
        section, name = field.split(".")
        current = out[section][name]
        if current is None or current == "":
            out[section][name] = value
    for field, allowed in CHOICES.items():
        section, name = field.split(".")
        if out[section][name] not in allowed:
            raise UserError(
                f"{field}={out[section][name]!r} is not one of {', '.join(allowed)} "
                f"(or '' for the recipe's)"
            )
    return out


def grid_setting(grids: ml_collections.ConfigDict, recipe: str, grid: str, field: str):
    """A grid's `batch_size` or `warmup_epochs`: set in the study, else the recipe's, else None."""
    value = grids[grid][field]
    if value is not None:
        return value
    return GRID_SETTINGS[recipe].get(grid, {}).get(field)


def prompt_dropout(configured: float | None, deep: bool) -> float:
    """The prompt dropout of a run: the configured one, else the reference's (by prompt depth)."""
    if configured is not None:
        return float(configured)
    return DEEP_PROMPT_DROPOUT if deep else 0.0


def effective_optimizer(
    name: str, weight_decay: float, *, fixed_adamw_decay: float, sgd_when_no_decay: bool
) -> tuple[str, float]:
    """(optimizer, weight decay) a configured pair trains with under a recipe's AdamW rules.

    The official `make_optimizer` builds AdamW only when the configured decay is > 0, and then
    with decay 0.01 whatever was configured; at decay 0 it builds SGD (momentum 0.9).
    """
    if name != "adamw":
        return name, weight_decay
    if weight_decay == 0 and sgd_when_no_decay:
        return "sgd", 0.0
    if weight_decay > 0 and fixed_adamw_decay > 0:
        return "adamw", fixed_adamw_decay
    return name, weight_decay
