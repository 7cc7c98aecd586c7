"""The study section of a config: what to run (datasets x strategies x sizes) and the protocol.

Study configs (`configs/study/*.py`) start from `study_config()`; `config.run` is the template every
run starts from (see `vpt_jax.config.base_config`), `config.study` the protocol.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from vpt_jax.config import base_config

# The paper's grids. Prompt tuning (SGD): lr x wd as in VPT; finetuning (AdamW): VPT's FT lr grid
# with the weight decays the study searched.
PROMPT_LRS = (50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05)
PROMPT_WDS = (0.01, 0.001, 0.0001, 0.0)
FINETUNE_LRS = (0.005, 0.001, 0.0005, 0.0001)
FINETUNE_WDS = (0.01, 0.001, 0.0001, 0.0)
PAPER_SEEDS = (42, 44, 82, 100, 800)


def study_config() -> ml_collections.ConfigDict:
    """Every field of a study, with the paper's protocol as defaults."""
    c = ml_collections.ConfigDict()
    c.kind = "study"  # run by the same entry point as single runs
    c.run = base_config()  # the template of every run (model, data options, epochs, batch, ...)
    c.run.data.eval_splits = ("test",)  # (set per run by the protocol)

    s = c.study = ml_collections.ConfigDict()
    s.datasets = ("vtab/cifar100",)  # vtab/<task>, procedural:<task>, tfds:..., folder:...
    s.strategies = ("full", "vpt_deep")  # strategies compared (vpt_jax.tuning.STRATEGIES)
    s.num_prompts = 0  # prompt length; 0: the per-task lengths of the paper (VTAB), else 10
    s.train_sizes = ()  # data scaling: training sizes (train:val = 4:1); (): the VTAB-1k splits
    s.shots = 0  # k-shot study: k examples per class in train and val; 0: all
    # A data-scaling sweep beside the standard splits, for some datasets x strategies only (the
    # demo's): each size n trains on train{n} (val n/4) as train_sizes do; a size equal to the
    # standard splits' (train800 for VTAB-1k) is the standard run itself, not a second one.
    s.scaling = ml_collections.ConfigDict()  # see above
    s.scaling.datasets = ()  # see above
    s.scaling.strategies = ()  # see above
    s.scaling.sizes = ()  # see above; (): no sweep
    # True: a size a dataset cannot supply is left out for that dataset (the paper's Tables 5-6:
    # "the sizes each task supports"); False: refused with the task's maximum.
    s.scaling.supported_only = False  # see above

    # The report's quadrant section (vpt_jax.study.quadrant_report): each task's FID to the
    # pretraining data, its quadrant, the measured FT-vs-VPT winner and the advisor's verdict.
    s.quadrants = ml_collections.ConfigDict()  # see above
    s.quadrants.reference = ""  # pretraining data: a dataset name or statistics .npz; "": none
    s.quadrants.reference_split = ""  # its split; "": the dataset's default (its training data)
    s.quadrants.features = "vit"  # vit: the run's backbone checkpoint's own features; inception
    s.quadrants.inception = ""  # FID Inception weights .npz (features=inception)
    s.quadrants.num_images = 1000  # images per dataset and of the reference
    s.quadrants.fid_threshold = 0.0  # similar at or below it; 0: the median FID of the tasks

    s.search = ml_collections.ConfigDict()  # phase 1: the grid, scored on validation
    s.search.train_split = "train800"  # trained on
    s.search.eval_split = "val200"  # scored on at the last epoch
    s.search.seed = 42  # the seed of every grid run
    # Full evaluations of the validation split every this many epochs; 0: only after the last (all
    # that selection reads).
    s.search.eval_every_epochs = 0  # see above

    s.final = ml_collections.ConfigDict()  # phase 2: the selected setting with several seeds
    s.final.train_split = "train800val200"  # trained on
    s.final.eval_split = "test"  # reported: mean and std over seeds of last-epoch top-1
    s.final.seeds = PAPER_SEEDS  # seeds of the final runs
    s.final.eval_every_epochs = 0  # full test evaluations every this many epochs; 0: after the last
    # Loss curves (report/loss_curves.png): test loss and top-1 every this many epochs on a fixed
    # subset of curve_examples test images, the same in every run of a task (0: the whole split).
    # The full test split is evaluated after the last epoch whatever these say.
    s.final.curve_every_epochs = 1  # 0: no curves
    s.final.curve_examples = 2000  # see above

    s.grids = ml_collections.ConfigDict()  # lr x wd grids, picked by the strategy's optimizer
    s.grids.prompt = ml_collections.ConfigDict()  # SGD strategies (VPT, linear, mixed, ...)
    s.grids.prompt.lrs = PROMPT_LRS  # base learning rates (scaled by batch/256 in the runs)
    s.grids.prompt.weight_decays = PROMPT_WDS  # weight decays
    # Set: the batch size / warmup of this grid's runs (replacing run.train.batch_size /
    # run.optimizer.warmup_epochs); unset: the recipe's (reference: 64 / 10), else the template's.
    s.grids.prompt.batch_size = placeholder(int)  # see above
    s.grids.prompt.warmup_epochs = placeholder(int)  # see above
    s.grids.finetune = ml_collections.ConfigDict()  # AdamW strategies (full)
    s.grids.finetune.lrs = FINETUNE_LRS  # base learning rates
    s.grids.finetune.weight_decays = FINETUNE_WDS  # weight decays
    s.grids.finetune.batch_size = placeholder(int)  # as above (reference: 128)
    s.grids.finetune.warmup_epochs = placeholder(int)  # as above (reference: 5)

    # Runs of one grid (or one final phase's seeds) that differ only in lr, weight decay and seed
    # train together as one program (vpt_jax.train.grid): at most this many at once, and no more
    # than fit the device's memory; 1: one at a time; 0: 8 on an accelerator, 1 on a CPU (where
    # benchmarks/grid.py measures no gain). Same records and numbers either way.
    s.batch_runs = 0  # see above
    s.claim_timeout_s = 600.0  # a claim not refreshed for this long belongs to a dead worker
    s.poll_interval_s = 2.0  # how often a worker with nothing to claim looks again
    # "": workers share the runs by claims; "i/n": this worker runs its fixed share (no claims;
    # Slurm arrays, Kubernetes indexed jobs); "slurm": i/n from the job array's environment.
    s.shard = ""  # static share of the runs (see above); "": share by claims
    # A finished run's orbax checkpoints (its trainable state and optimizer slots, only needed to
    # resume it) are deleted once its artifact and result are written; True keeps them. FT's are
    # about 2 GB a run on ViT-B/16: most of a study's disk.
    s.keep_checkpoints = False  # see above
    s.ft_strategy = "full"  # the baseline that "wins" are counted against
    s.vpt_strategy = "vpt_deep"  # the prompt-tuning method of the FT-vs-VPT comparisons
    # The report also prints one table per task group (natural, specialized, structured, ...), as
    # the paper's appendix tables do for each backbone.
    s.group_tables = False  # see above
    return c


def vtab_datasets(names: str | None) -> tuple[str, ...]:
    """`cifar100+dtd` -> ("vtab/cifar100", "vtab/dtd"); None or "all": the 19 VTAB-1k tasks."""
    from vpt_jax.data.vtab import ALIASES, VTAB_TASKS

    if not names or names == "all":
        return tuple(f"vtab/{t}" for t in VTAB_TASKS)
    return tuple(f"vtab/{ALIASES.get(n, n)}" for n in names.split("+"))


def fgvc_datasets(names: str | None) -> tuple[str, ...]:
    """`cub+dogs` -> ("fgvc/cub", "fgvc/dogs"); None or "all": the five FGVC datasets."""
    from vpt_jax.data.fgvc import FGVC_TASKS, get_fgvc_task

    if not names or names == "all":
        return tuple(f"fgvc/{t}" for t in FGVC_TASKS)
    return tuple(f"fgvc/{get_fgvc_task(n).name}" for n in names.split("+"))


def apply_args(c: ml_collections.ConfigDict, arg: str | None, allowed: tuple[str, ...]) -> None:
    """Applies a config-file argument such as `tasks=cifar100+dtd,strategies=full+vpt_deep,seeds=42`.

    Keys: tasks (VTAB task names joined by +, or all; FGVC names where the study's datasets are
    FGVC's), strategies, seeds, sizes (data scaling),
    shots, epochs, recipe (clean or reference), backbone (vit, swin, mae, moco_v3).

    Raises:
      ConfigArgumentError: an unknown key (the allowed ones are listed) or a number that is not.
    """
    from vpt_jax.cli import config_arguments, config_int

    for key, value in config_arguments(arg, allowed).items():
        values = value.split("+")
        if key == "tasks":
            fgvc = all(str(d).startswith("fgvc/") for d in c.study.datasets)
            c.study.datasets = (fgvc_datasets if fgvc else vtab_datasets)(value)
        elif key == "strategies":
            c.study.strategies = tuple(values)
        elif key == "seeds":
            c.study.final.seeds = tuple(config_int(key, v) for v in values)
        elif key == "sizes":
            c.study.train_sizes = tuple(config_int(key, v) for v in values)
        elif key == "shots":
            c.study.shots = config_int(key, value)
        elif key == "epochs":
            c.run.train.epochs = config_int(key, value)
        elif key == "recipe":
            c.run.recipe = value  # an unknown name is reported when the study starts
        elif key == "backbone":
            use_backbone(c, value)


# The appendix C backbones: model section and the official file names (pass the real paths).
APPENDIX_BACKBONES = {
    "swin": dict(variant="B", checkpoint="swin_base_patch4_window7_224_22k.pth"),
    "mae": dict(variant="B/16", checkpoint="mae_pretrain_vit_base.pth"),
    "moco_v3": dict(variant="B/16", checkpoint="linear-vit-b-300ep.pth.tar"),
}


def use_backbone(c: ml_collections.ConfigDict, name: str) -> None:
    """Points a study's run template at one of `APPENDIX_BACKBONES` (or `vit`: ViT-B/16)."""
    from vpt_jax.errors import UserError

    choices = {"vit": dict(variant="B/16", checkpoint="ViT-B_16.npz"), **APPENDIX_BACKBONES}
    if name not in choices:
        raise UserError(f"unknown backbone {name!r}; use one of: {', '.join(choices)}")
    c.run.model.family = name
    c.run.model.variant = choices[name]["variant"]
    c.run.model.checkpoint = choices[name]["checkpoint"]


def paper_study_config() -> ml_collections.ConfigDict:
    """The start of the paper's studies: ViT-B/16 (ImageNet-21k) trained with the `reference`
    recipe (the official code's training; the config argument `recipe=clean` switches)."""
    c = study_config()
    c.run.recipe = "reference"
    c.run.model.variant = "B/16"
    c.run.model.checkpoint = "ViT-B_16.npz"  # override with the real path
    return c
