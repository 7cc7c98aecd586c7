"""The run configuration: one ml_collections ConfigDict of settings, every field commented.

Config files in `configs/` start from `base_config()` and set what differs; the CLI locks the result,
so a misspelled `--config.x.y=...` override fails. This module holds settings and value checks only
(`check`): what the settings build (the backbone, the strategy, the optimizers, the data) is built
once per run by `vpt_jax.train.setup`, which also reports every mistake in a name.
"""

from __future__ import annotations

import math

import ml_collections
from ml_collections.config_dict import placeholder

from vpt_jax.errors import UserError

# The optimizers (vpt_jax.train.optimizer); each strategy names the paper's (AdamW for FT, else SGD).
OPTIMIZERS = ("sgd", "adamw")


def base_config() -> ml_collections.ConfigDict:
    """Every field of a run, with the study's defaults (ViT-B/16, VPT-deep, VTAB-1k)."""
    c = ml_collections.ConfigDict()
    c.kind = "run"  # run: one training run; study: a protocol of many runs (configs/study/*.py)
    # The training recipe (vpt_jax/recipe.py, README "Training recipes"): clean (vpt_jax's) or
    # reference (the official VPT code's, which produced the paper's numbers). Fields marked
    # "recipe" below are unset (None or "") by default and take the recipe's value; set one to
    # override that part of the bundle.
    c.recipe = "clean"  # clean | reference

    c.model = ml_collections.ConfigDict()  # the backbone
    # vit: google-research's supervised ViT (.npz, or a timm ViT file); mae, moco_v3: the
    # self-supervised ViT-B/16s; swin: Swin Transformer (README "Backbones")
    c.model.family = "vit"  # vit | mae | moco_v3 | swin
    # ViTs: Ti|S|B|L|H/8|14|16|32; swin: T|S|B|L; "auto": widths from the checkpoint; "custom"
    c.model.variant = "B/16"  # see above
    c.model.patch_size = 16  # "custom" only: patch side in pixels
    c.model.hidden_size = 768  # "custom" only: token width
    c.model.num_layers = 12  # "custom" only: transformer blocks
    c.model.num_heads = 12  # "custom" only: attention heads
    c.model.mlp_dim = 3072  # "custom" only: MLP hidden width
    # pretrained weights: .npz, .safetensors or PyTorch .pth (read with weights_only=True, needs
    # torch); the format and layout are read from the file; "" trains from random init
    c.model.checkpoint = ""  # see above
    c.model.image_size = 224  # input resolution; position embeddings are resized to it
    # swin "custom" only: stage-0 width, blocks and heads per stage, attention window
    c.model.embed_dim = 128  # swin "custom" only: stage-0 width
    c.model.depths = (2, 2, 18, 2)  # swin "custom" only: blocks per stage
    c.model.stage_heads = (4, 8, 16, 32)  # swin "custom" only: heads per stage
    c.model.window_size = 7  # swin "custom" only: attention window side
    # swin: True attaches prompts to windows in the official code's order, where the images of a
    # batch see each other's prompts (what produced the paper's Swin numbers); False: per image
    c.model.prompt_batch_mixing = False  # swin only (see above)
    # stochastic depth (drop path), linear over blocks; runs only where the backbone trains (FT);
    # -1: the official finetuning code's rate for the family (swin 0.5, mae 0.1, vit/moco_v3 0)
    c.model.drop_path_rate = -1.0  # see above
    # recipe: True tanh GELU (clean: as the checkpoints were trained); False exact erf (reference)
    c.model.gelu_approximate = placeholder(bool)  # recipe: True tanh, False erf
    # recipe: backbone dropout (clean 0, reference 0.1); runs only where a strategy trains the
    # backbone (FT): frozen backbones run deterministic
    c.model.dropout_rate = placeholder(float)  # recipe: 0.0 clean, 0.1 reference
    # recipe: True: the attention output is dropped at dropout_rate (google's ViT, clean); False: at
    # attention_dropout_rate (the VPT code's ViT, reference)
    c.model.dropout_after_attention = placeholder(bool)  # recipe: True clean, False reference
    c.model.head_init = ""  # recipe: zeros (clean) | vpt (kaiming_normal fan_out, bias -log(99))
    c.model.attention_dropout_rate = 0.0  # dropout on attention weights (same rule)
    # bf16: mixed precision in the form that is fast on this backend (bf16 matmuls with float32
    # accumulation on CPU, ~1.7x faster with AVX512-BF16; bf16 activations and fused attention on
    # GPU/TPU); bf16_matmul and bf16_activations pick one. See vpt_jax/models/precision.py.
    c.model.precision = "float32"  # float32|bf16|bf16_matmul|bf16_activations; params stay float32

    c.data = ml_collections.ConfigDict()  # what is trained and evaluated on
    c.data.dataset = "vtab/cifar100"  # vtab/<task>, tfds:<name>, folder:<path> or procedural:<task>
    c.data.train_split = "train800val200"  # split trained on (VTAB-1k final runs: train800val200)
    c.data.eval_splits = ("test",)  # splits evaluated after every epoch (e.g. ("val200",))
    c.data.data_dir = ""  # TFDS data directory; "" uses $TFDS_DATA_DIR or ~/tensorflow_datasets
    # recipe: inception: [-1, 1] (clean: the checkpoints'); imagenet: ImageNet mean/std (reference)
    c.data.normalization = ""  # recipe: inception (clean) | imagenet (reference)
    c.data.flip = False  # random horizontal flips (the study uses no augmentation)
    c.data.crop_padding = 0  # random crops after this much padding; 0: none
    # fgvc/ only: train on random crops of the shorter-side resize (the FGVC recipe's
    # Resize(256) + RandomCrop(224); evaluation always centre-crops the resize).
    c.data.resize_crop = False  # see above
    c.data.stream_train = False  # read each step's examples on the host (else: when too large)
    c.data.seed = 0  # dataset seed (procedural data, image-folder hold-out, k-shot draws)
    c.data.shots = 0  # k examples per class of the train split and of val* eval splits; 0: all

    c.strategy = ml_collections.ConfigDict()  # what trains (vpt_jax.tuning)
    c.strategy.name = "vpt_deep"  # one of vpt_jax.tuning.STRATEGIES, or "custom" (uses rules)
    c.strategy.num_prompts = 10  # prompt length p (vpt_shallow, vpt_deep, mixed, ft_then_pt)
    # recipe: dropout on prompt tokens (clean 0; reference 0.1 on deep prompts, 0 on shallow)
    c.strategy.prompt_dropout = placeholder(float)  # recipe (see above)
    c.strategy.prompt_dim = 0  # prompt width before a projection to the model width; 0: none
    c.strategy.partial_k = 1  # blocks trained by "partial"
    c.strategy.mlp_hidden = (768, 768)  # hidden widths of the "mlp" probe's head (3 layers)
    c.strategy.lora_rank = 8  # rank of "lora"
    c.strategy.lora_alpha = 8.0  # LoRA scale numerator (updates scaled by alpha / rank)
    c.strategy.rules = ()  # "custom" only: ((regex, frozen|decay|no_decay), ...), first match wins
    c.strategy.backbone_dropout = False  # "custom" only: run the backbone's dropout while training

    c.optimizer = ml_collections.ConfigDict()  # the optimizer of the (last) stage
    c.optimizer.name = ""  # sgd | adamw; "": the strategy's (AdamW for full, SGD otherwise)
    c.optimizer.lr = 0.25  # base learning rate (the study searches a grid; see configs/study)
    c.optimizer.scale_lr_by_batch = True  # use lr * batch_size / 256, as the VPT code does
    c.optimizer.weight_decay = 0.001  # on the leaves the strategy labels "decay"
    c.optimizer.momentum = 0.9  # SGD momentum
    c.optimizer.b1 = 0.9  # AdamW beta1
    c.optimizer.b2 = 0.999  # AdamW beta2
    c.optimizer.eps = placeholder(float)  # recipe: AdamW epsilon (clean 1e-8, reference 1e-6)
    c.optimizer.grad_clip = 0.0  # clip the global gradient norm to this; 0: no clipping
    c.optimizer.warmup_epochs = 10  # linear warmup from 0, then cosine decay to 0
    # recipe: step: the warmup-cosine rate changes every step (clean); epoch: once per epoch, as
    # the official LambdaLR stepped per epoch (reference; epoch 1 trains at rate 0)
    c.optimizer.schedule_unit = ""  # recipe: step (clean) | epoch (reference)
    # recipe: optax (optax.adamw, clean) | vpt (the official AdamW: eps added to sqrt(v) before
    # bias correction, decay applied to the params after the Adam step; reference)
    c.optimizer.adamw = ""  # recipe: optax (clean) | vpt (reference)
    # recipe: which trained leaves decay. strategy: the strategy's labels (clean); vpt: the official
    # code's sets (SGD: every trained leaf but the head bias; AdamW: leaves without "bias")
    c.optimizer.decay_set = ""  # recipe: strategy (clean) | vpt (reference)
    # recipe: > 0: an AdamW run with weight_decay > 0 uses this decay instead (the official code
    # hard-codes 0.01; reference); 0: the configured one (clean)
    c.optimizer.fixed_adamw_decay = placeholder(float)  # recipe: 0.0 clean, 0.01 reference
    # recipe: True: an AdamW run with weight_decay 0 trains with SGD (momentum) instead, as the
    # official code silently does (reference); False: it stays AdamW (clean)
    c.optimizer.sgd_when_no_decay = placeholder(bool)  # recipe: False clean, True reference

    c.ft_stage = ml_collections.ConfigDict()  # ft_then_pt only: its first (finetuning) stage
    c.ft_stage.epochs = 100  # epochs of the finetuning stage
    c.ft_stage.optimizer = "adamw"  # its optimizer
    c.ft_stage.lr = 0.001  # its base learning rate (scaled by batch/256 like the main one)
    c.ft_stage.weight_decay = 0.0001  # its weight decay
    c.ft_stage.warmup_epochs = 10  # its warmup (the recipe's schedule, AdamW and decay rules apply)

    c.train = ml_collections.ConfigDict()  # the loop
    c.train.epochs = 100  # training epochs (ft_then_pt: of the prompt-tuning stage)
    c.train.batch_size = 64  # global batch size; must be divisible by the device count
    c.train.eval_batch_size = 256  # evaluation batch size (the last batch is padded and masked)
    c.train.seed = 42  # seed of initialisation, shuffling and dropout
    # Save the trainable state every this many epochs and after a stage's last; 0: none (see
    # ZERO_MEANS), for runs of seconds whose restart costs less than their checkpoints.
    c.train.checkpoint_every_epochs = 1  # see above
    # Evaluate the eval splits every this many epochs, and always after a stage's last; 0: only then.
    c.train.eval_every_epochs = 1  # see above
    # Loss curves: every this many epochs, also evaluate a fixed subset of each eval split (recorded
    # as <split>_curve_loss / <split>_curve_top1); 0: no curve evaluations.
    c.train.curve_every_epochs = 0  # see above
    # The curve subset: this many examples of each eval split, drawn once by a fixed seed (the same
    # for every strategy and training seed); 0: the whole split.
    c.train.curve_examples = 0  # see above
    # A stage that trains only the head (linear / MLP probes) on a frozen, deterministic backbone
    # with no augmentation computes each split's features once and trains the head on them (the
    # same numbers to float rounding); False: the backbone runs at every step.
    c.train.cache_features = True  # see above
    c.train.log_every_steps = 0  # also log the running train loss every this many steps; 0: off
    c.train.export_checkpoint = False  # also write checkpoint.npz: the whole model, google layout
    # A workdir holding a run of another config is refused; True renames that run to
    # <workdir>.previous-N (kept whole) and starts this one there (e.g. after a divergence).
    c.train.move_aside_other_run = False  # set that other run aside instead of refusing

    c.distributed = ml_collections.ConfigDict()  # multi-host: jax.distributed.initialize arguments
    c.distributed.coordinator_address = ""  # host:port of process 0; "" = single host
    c.distributed.num_processes = 1  # number of processes (hosts)
    c.distributed.process_id = 0  # this process's index
    return c


ZERO_MEANS = {  # what 0 means in the train fields where 0 is allowed
    "eval_every_epochs": "only after a stage's last epoch",
    "curve_every_epochs": "no curve evaluations",
    "curve_examples": "the whole split",
    "checkpoint_every_epochs": "no checkpoints but the last of a stage that another stage "
    "follows (a killed run starts over)",
}


def check(c: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises a one-line `UserError` for every value the settings alone show to be wrong.

    `c` has its recipe resolved (`vpt_jax.recipe.resolve`).

    Names (the variant, strategy, precision, normalisation, dataset) are checked where they are
    built, once per run, in `vpt_jax.train.setup`.
    """
    for name, value in (("optimizer.lr", c.optimizer.lr), ("ft_stage.lr", c.ft_stage.lr)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a positive number, got {value}")
    for name, value in (
        ("optimizer.weight_decay", c.optimizer.weight_decay),
        ("ft_stage.weight_decay", c.ft_stage.weight_decay),
        ("optimizer.grad_clip", c.optimizer.grad_clip),
        ("optimizer.warmup_epochs", c.optimizer.warmup_epochs),
        ("ft_stage.warmup_epochs", c.ft_stage.warmup_epochs),
        ("data.shots", c.data.shots),
        ("train.log_every_steps", c.train.log_every_steps),
        ("optimizer.fixed_adamw_decay", c.optimizer.fixed_adamw_decay),
    ):
        if value < 0:
            raise UserError(f"{name} must be >= 0, got {value}")
    for name, value in (
        ("model.dropout_rate", c.model.dropout_rate),
        ("model.attention_dropout_rate", c.model.attention_dropout_rate),
        ("strategy.prompt_dropout", c.strategy.prompt_dropout),
    ):
        if value is not None and not 0 <= value < 1:
            raise UserError(
                f"{name} is a probability of dropping: use 0 <= {name} < 1, got {value}"
            )
    if not (c.optimizer.eps > 0):
        raise UserError(f"optimizer.eps must be > 0, got {c.optimizer.eps}")
    if c.optimizer.name not in ("", *OPTIMIZERS) or c.ft_stage.optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer names are {', '.join(OPTIMIZERS)} (optimizer.name may be '')")
    for name in ("epochs", "batch_size", "eval_batch_size"):
        if c.train[name] < 1:
            raise UserError(f"train.{name} must be >= 1, got {c.train[name]}")
    if c.ft_stage.epochs < 1:
        raise UserError(f"ft_stage.epochs must be >= 1, got {c.ft_stage.epochs}")
    for name in (
        "eval_every_epochs",
        "curve_every_epochs",
        "curve_examples",
        "checkpoint_every_epochs",
    ):
        if c.train[name] < 0:
            raise UserError(
                f"train.{name} must be >= 0 (0: {ZERO_MEANS[name]}), got {c.train[name]}"
            )
    if c.train.curve_examples and not c.train.curve_every_epochs:
        raise UserError(
            f"train.curve_examples={c.train.curve_examples} is only used by curve evaluations; "
            "set train.curve_every_epochs (e.g. 1) too, or leave train.curve_examples at 0"
        )
    for name in ("batch_size", "eval_batch_size"):
        if c.train[name] % num_devices:
            raise UserError(
                f"train.{name}={c.train[name]} is not divisible by the {num_devices} devices; "
                f"use a multiple of {num_devices}"
            )
    if not c.data.train_split:
        raise UserError("data.train_split is empty; name the split to train on (e.g. train800)")
    if c.data.resize_crop and not str(c.data.dataset).startswith("fgvc/"):
        raise UserError(
            f"data.resize_crop=True crops images kept at their own size, which only fgvc/<name> "
            f"datasets keep; {c.data.dataset} is resized when read: use data.crop_padding instead"
        )
    if not c.data.eval_splits or not all(c.data.eval_splits):
        raise UserError(
            f"data.eval_splits must name at least one split to evaluate, e.g. ('test',); got "
            f"{tuple(c.data.eval_splits)}"
        )
