"""The run configuration: one ml_collections ConfigDict, every field commented, validated up front.

Config files in `configs/` start from `base_config()` and set what differs; the CLI locks the result,
so a misspelled `--config.x.y=...` override fails. `validate` raises a one-line `UserError` for every
mistake it can see before any data is read or anything compiled.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from vpt_jax.errors import UserError
from vpt_jax.models.precision import check_precision
from vpt_jax.models.vit import ViTConfig
from vpt_jax.tuning.strategies import STRATEGIES, Strategy, get_strategy

# The paper's optimizer per strategy: AdamW for finetuning, SGD (momentum 0.9) for everything else.
OPTIMIZERS = ("sgd", "adamw")


def base_config() -> ml_collections.ConfigDict:
    """Every field of a run, with the study's defaults (ViT-B/16, VPT-deep, VTAB-1k)."""
    c = ml_collections.ConfigDict()
    c.kind = "run"  # run: one training run; study: a protocol of many runs (configs/study/*.py)

    c.model = ml_collections.ConfigDict()  # the backbone
    c.model.variant = "B/16"  # Ti|S|B|L|H/8|14|16|32; "auto": widths from the checkpoint; "custom"
    c.model.patch_size = 16  # "custom" only: patch side in pixels
    c.model.hidden_size = 768  # "custom" only: token width
    c.model.num_layers = 12  # "custom" only: transformer blocks
    c.model.num_heads = 12  # "custom" only: attention heads
    c.model.mlp_dim = 3072  # "custom" only: MLP hidden width
    c.model.checkpoint = ""  # pretrained .npz (e.g. ViT-B_16.npz); "" trains from random init
    c.model.image_size = 224  # input resolution; position embeddings are resized to it
    c.model.gelu_approximate = True  # tanh GELU, as the checkpoints were trained; False: exact erf
    c.model.dropout_rate = 0.0  # backbone dropout (used only by strategies that train the backbone)
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
    c.data.normalization = "inception"  # inception: [-1, 1] (the checkpoints); imagenet: mean/std
    c.data.flip = False  # random horizontal flips (the study uses no augmentation)
    c.data.crop_padding = 0  # random crops after this much padding; 0: none
    c.data.seed = 0  # dataset seed (procedural data, image-folder hold-out, k-shot draws)
    c.data.shots = 0  # k examples per class of the train split and of val* eval splits; 0: all

    c.strategy = ml_collections.ConfigDict()  # what trains (vpt_jax.tuning)
    c.strategy.name = "vpt_deep"  # one of vpt_jax.tuning.STRATEGIES, or "custom" (uses rules)
    c.strategy.num_prompts = 10  # prompt length p (vpt_shallow, vpt_deep, mixed, ft_then_pt)
    c.strategy.prompt_dropout = 0.0  # dropout on prompt tokens (VPT code: 0.1 for deep runs)
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
    c.optimizer.eps = 1e-8  # AdamW epsilon
    c.optimizer.grad_clip = 0.0  # clip the global gradient norm to this; 0: no clipping
    c.optimizer.warmup_epochs = 10  # linear warmup from 0, then cosine decay to 0

    c.ft_stage = ml_collections.ConfigDict()  # ft_then_pt only: its first (finetuning) stage
    c.ft_stage.epochs = 100  # epochs of the finetuning stage
    c.ft_stage.optimizer = "adamw"  # its optimizer
    c.ft_stage.lr = 0.001  # its base learning rate (scaled by batch/256 like the main one)
    c.ft_stage.weight_decay = 0.0001  # its weight decay
    c.ft_stage.warmup_epochs = 10  # its warmup

    c.train = ml_collections.ConfigDict()  # the loop
    c.train.epochs = 100  # training epochs (ft_then_pt: of the prompt-tuning stage)
    c.train.batch_size = 64  # global batch size; must be divisible by the device count
    c.train.eval_batch_size = 256  # evaluation batch size (the last batch is padded and masked)
    c.train.seed = 42  # seed of initialisation, shuffling and dropout
    c.train.checkpoint_every_epochs = 1  # save the trainable state every this many epochs
    c.train.eval_every_epochs = 1  # evaluate every this many epochs (and always at the end)
    c.train.log_every_steps = 0  # also log the running train loss every this many steps; 0: off
    c.train.export_checkpoint = False  # also write checkpoint.npz: the whole model, google layout

    c.distributed = ml_collections.ConfigDict()  # multi-host: jax.distributed.initialize arguments
    c.distributed.coordinator_address = ""  # host:port of process 0; "" = single host
    c.distributed.num_processes = 1  # number of processes (hosts)
    c.distributed.process_id = 0  # this process's index
    return c


def vit_config(c: ml_collections.ConfigDict, checkpoint_flat: dict | None = None) -> ViTConfig:
    """The backbone's `ViTConfig` from the `model` section (`variant="auto"` reads the checkpoint)."""
    common = dict(
        image_size=c.model.image_size,
        gelu_approximate=c.model.gelu_approximate,
        dropout_rate=c.model.dropout_rate,
        attention_dropout_rate=c.model.attention_dropout_rate,
        precision=c.model.precision,
    )
    if c.model.variant == "auto":
        if checkpoint_flat is None:
            raise UserError("model.variant='auto' reads the widths from model.checkpoint; set one")
        return dataclasses.replace(widths_from_checkpoint(checkpoint_flat), **common)
    if c.model.variant == "custom":
        m = c.model
        widths = (m.patch_size, m.hidden_size, m.num_layers, m.num_heads, m.mlp_dim)
        if min(widths) < 1 or m.hidden_size % m.num_heads or m.image_size % m.patch_size:
            raise UserError(
                "model.variant='custom' needs positive widths, hidden_size divisible by num_heads "
                f"and image_size divisible by patch_size; got {widths}, image_size {m.image_size}"
            )
        return ViTConfig(*widths, **common)
    try:
        return ViTConfig.from_variant(c.model.variant, **common)
    except ValueError as e:
        raise UserError(f"model.variant: {e}") from None


def widths_from_checkpoint(flat: dict) -> ViTConfig:
    """The architecture a canonical flat checkpoint holds (see `models.checkpoint.to_canonical`)."""
    query = flat["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"]
    layers = len({k.split("/")[1] for k in flat if k.startswith("Transformer/encoderblock_")})
    return ViTConfig(
        patch_size=int(flat["embedding/kernel"].shape[0]),
        hidden_size=int(query.shape[0]),
        num_layers=layers,
        num_heads=int(query.shape[1]),
        mlp_dim=int(flat["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"].shape[1]),
    )


def strategy(c: ml_collections.ConfigDict, num_layers: int) -> Strategy:
    """The `Strategy` the `strategy` section describes."""
    s = c.strategy
    if s.name == "custom":
        if not s.rules:
            raise UserError("strategy 'custom' needs strategy.rules: ((regex, label), ...)")
        return Strategy(
            "custom",
            tuple((str(p), str(label)) for p, label in s.rules),
            backbone_dropout=s.backbone_dropout,
        )
    if s.rules:
        raise UserError(f"strategy.rules is only read by strategy 'custom' (not {s.name!r})")
    return get_strategy(
        s.name,
        num_prompts=s.num_prompts,
        prompt_dropout=s.prompt_dropout,
        prompt_dim=s.prompt_dim or None,
        partial_k=s.partial_k,
        num_layers=num_layers,
        mlp_hidden=tuple(s.mlp_hidden),
        lora_rank=s.lora_rank,
        lora_alpha=s.lora_alpha,
    )


def validate(c: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises a one-line `UserError` for every config mistake visible without reading data."""
    if c.strategy.name not in (*STRATEGIES, "custom"):
        raise UserError(
            f"unknown strategy {c.strategy.name!r}; use one of: {', '.join(STRATEGIES)}, custom"
        )
    try:
        check_precision(c.model.precision)
    except ValueError as e:
        raise UserError(f"model.precision: {e}") from None
    if c.model.variant != "auto":
        vit_config(c)  # raises for an unknown variant or bad custom widths
    for name, value in (("optimizer.lr", c.optimizer.lr), ("ft_stage.lr", c.ft_stage.lr)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a positive number, got {value}")
    for name, value in (
        ("optimizer.weight_decay", c.optimizer.weight_decay),
        ("ft_stage.weight_decay", c.ft_stage.weight_decay),
        ("optimizer.grad_clip", c.optimizer.grad_clip),
        ("optimizer.warmup_epochs", c.optimizer.warmup_epochs),
        ("model.dropout_rate", c.model.dropout_rate),
        ("strategy.prompt_dropout", c.strategy.prompt_dropout),
    ):
        if value < 0:
            raise UserError(f"{name} must be >= 0, got {value}")
    if c.optimizer.name not in ("", *OPTIMIZERS) or c.ft_stage.optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer names are {', '.join(OPTIMIZERS)} (optimizer.name may be '')")
    for name in ("epochs", "batch_size", "eval_batch_size"):
        if c.train[name] < 1:
            raise UserError(f"train.{name} must be >= 1, got {c.train[name]}")
    for name in ("batch_size", "eval_batch_size"):
        if c.train[name] % num_devices:
            raise UserError(
                f"train.{name}={c.train[name]} is not divisible by the {num_devices} devices; "
                f"use a multiple of {num_devices}"
            )
    if c.data.normalization not in ("inception", "imagenet"):
        raise UserError(
            f"data.normalization is inception or imagenet, not {c.data.normalization!r}"
        )
    if not c.data.eval_splits and not c.data.train_split:
        raise UserError("data.train_split is empty")
    strategy(c, num_layers=_depth(c))  # strategy arguments (prompt length, k, rank, rules)


def _depth(c: ml_collections.ConfigDict) -> int:
    if c.model.variant == "auto":
        return 10**6  # unknown until the checkpoint is read; partial_k is checked again then
    return vit_config(c).num_layers


def to_dict(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """A JSON-serialisable copy (tuples become lists)."""
    return c.to_dict()
