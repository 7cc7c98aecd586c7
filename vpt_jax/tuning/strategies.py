"""Tuning strategies as data: a rule table plus the model additions it trains.

A `Strategy` says which parameters train (its rule table, see `rules.py`), what it adds to the ViT
(prompts, LoRA factors, an MLP head), whether the backbone's dropout runs while training, and, for
two-stage methods, its stages. Neither the model nor the trainer branches on strategy names: they
read these fields. `get_strategy(name, ...)` builds the study's strategies; `Strategy(...)` with a
custom rule table (e.g. from a config) adds a new one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from vpt_jax.errors import UserError
from vpt_jax.models.prompts import PromptedEncoder
from vpt_jax.models.vit import Encoder, VisionTransformer, ViTConfig
from vpt_jax.tuning.rules import DECAY, FROZEN, NO_DECAY, Rules, check_rules

PROMPTS = r"Transformer/prompt/.*"
HEAD = (
    (r"head/kernel", DECAY),
    (r"head/bias", NO_DECAY),
)  # torch SGD in VPT: no decay on head bias


@dataclasses.dataclass(frozen=True)
class Strategy:
    """What trains and what the model gains for it."""

    name: str
    rules: Rules  # (regex, label) pairs, first full match wins; labels frozen/decay/no_decay
    num_prompts: int = 0  # VPT prompt tokens per set; 0: no prompts
    deep_prompts: bool = False  # a prompt set per block (VPT-deep) instead of one at the input
    prompt_dropout: float = 0.0  # dropout on prompt tokens while training
    prompt_dim: int | None = None  # prompt width before a projection to the model width; None: none
    lora_rank: int = 0  # rank of LoRA updates on attention query/value; 0: none
    lora_alpha: float = 1.0  # LoRA updates are scaled by lora_alpha / lora_rank
    head_mlp_dims: tuple[int, ...] = ()  # hidden widths of an MLP head; (): a linear head
    backbone_dropout: bool = True  # False: the backbone runs deterministic while training
    optimizer: str = "sgd"  # the paper's optimizer for it: sgd (momentum 0.9) or adamw
    stages: tuple[Strategy, ...] = ()  # run in order (each starting from the last); () = itself

    def __post_init__(self):
        check_rules(self.rules)
        if self.num_prompts < 0 or self.lora_rank < 0:
            raise UserError(f"strategy {self.name!r}: num_prompts and lora_rank must be >= 0")

    def encoder(self) -> Callable[..., Encoder]:
        """The encoder class (a partial) that carries this strategy's prompts and LoRA factors."""
        lora = dict(lora_rank=self.lora_rank, lora_alpha=self.lora_alpha)
        if not self.num_prompts:
            return functools.partial(Encoder, **lora) if self.lora_rank else Encoder
        return functools.partial(
            PromptedEncoder,
            num_prompts=self.num_prompts,
            deep=self.deep_prompts,
            prompt_dropout=self.prompt_dropout,
            prompt_dim=self.prompt_dim,
            **lora,
        )

    def build_model(self, config: ViTConfig, num_classes: int | None) -> VisionTransformer:
        """The ViT this strategy trains: the backbone plus its prompts, LoRA factors or MLP head."""
        return VisionTransformer(
            config, num_classes, encoder=self.encoder(), head_mlp_dims=self.head_mlp_dims
        )

    @property
    def final(self) -> Strategy:
        """The strategy whose model and parameters a run ends with."""
        return self.stages[-1] if self.stages else self


def _need_prompts(name: str, num_prompts: int) -> None:
    if num_prompts < 1:
        raise UserError(
            f"strategy {name!r} needs a prompt length >= 1 (got {num_prompts}); set num_prompts"
        )


def full() -> Strategy:
    """FT: every parameter trains (AdamW; biases without weight decay, as the VPT code does)."""
    return Strategy("full", ((r".*bias", NO_DECAY), (r".*", DECAY)), optimizer="adamw")


def linear() -> Strategy:
    """Linear probe: the head only, on frozen features."""
    return Strategy("linear", (*HEAD, (r".*", FROZEN)))


def mlp(hidden: tuple[int, ...] = (768, 768)) -> Strategy:
    """MLP probe: a (len(hidden)+1)-layer MLP head on frozen features."""
    head = ((r"head_mlp_\d+/kernel", DECAY), (r"head_mlp_\d+/bias", NO_DECAY), *HEAD)
    return Strategy(f"mlp{len(hidden) + 1}", (*head, (r".*", FROZEN)), head_mlp_dims=hidden)


def vpt(num_prompts: int, *, deep: bool, prompt_dropout: float = 0.0, prompt_dim=None) -> Strategy:
    """VPT: prompts and head train, the backbone is frozen and runs deterministic."""
    name = "vpt_deep" if deep else "vpt_shallow"
    _need_prompts(name, num_prompts)
    return Strategy(
        name,
        ((PROMPTS, DECAY), *HEAD, (r".*", FROZEN)),
        num_prompts=num_prompts,
        deep_prompts=deep,
        prompt_dropout=prompt_dropout,
        prompt_dim=prompt_dim,
        backbone_dropout=False,
    )


def mixed(num_prompts: int, *, deep: bool = True, prompt_dropout: float = 0.0) -> Strategy:
    """Mixed: prompts and the whole backbone train together (SGD, backbone dropout off)."""
    _need_prompts("mixed", num_prompts)
    return Strategy(
        "mixed",
        ((r"head/bias", NO_DECAY), (r".*", DECAY)),
        num_prompts=num_prompts,
        deep_prompts=deep,
        prompt_dropout=prompt_dropout,
        backbone_dropout=False,
    )


def ft_then_pt(num_prompts: int, *, prompt_dropout: float = 0.0) -> Strategy:
    """FT-then-PT: stage 1 finetunes everything, stage 2 freezes that backbone and prompt-tunes."""
    stage2 = vpt(num_prompts, deep=True, prompt_dropout=prompt_dropout)
    return dataclasses.replace(stage2, name="ft_then_pt", stages=(full(), stage2))


def partial(k: int, num_layers: int) -> Strategy:
    """Partial-k: the last k blocks, the final LayerNorm and the head train."""
    if not 1 <= k <= num_layers:
        raise UserError(f"strategy 'partial' needs 1 <= k <= {num_layers} (the depth); got k={k}")
    blocks = "|".join(str(i) for i in range(num_layers - k, num_layers))
    tuned = rf"(Transformer/encoderblock_({blocks})|Transformer/encoder_norm)/.*"
    return Strategy(
        f"partial{k}",
        ((tuned + "bias", NO_DECAY), (tuned, DECAY), *HEAD, (r".*", FROZEN)),
    )


def bias() -> Strategy:
    """Bias tuning (TinyTL-bias): every bias and the head train."""
    return Strategy("bias", (*HEAD, (r".*/bias", DECAY), (r".*", FROZEN)))


def lora(rank: int, alpha: float | None = None) -> Strategy:
    """LoRA: rank-r updates on attention query and value, and the head."""
    if rank < 1:
        raise UserError(f"strategy 'lora' needs a rank >= 1; got {rank}")
    return Strategy(
        "lora",
        ((r".*_lora/[ab]", DECAY), *HEAD, (r".*", FROZEN)),
        lora_rank=rank,
        lora_alpha=float(rank if alpha is None else alpha),
        backbone_dropout=False,
    )


STRATEGIES = (
    "full",
    "linear",
    "mlp",
    "vpt_shallow",
    "vpt_deep",
    "mixed",
    "ft_then_pt",
    "partial",
    "bias",
    "lora",
)


def get_strategy(
    name: str,
    *,
    num_prompts: int = 0,
    prompt_dropout: float = 0.0,
    prompt_dim: int | None = None,
    partial_k: int = 1,
    num_layers: int = 12,
    mlp_hidden: tuple[int, ...] = (768, 768),
    lora_rank: int = 8,
    lora_alpha: float | None = None,
) -> Strategy:
    """Builds a named strategy of the study.

    Args:
      name: one of `STRATEGIES`.
      num_prompts: prompt length p (VPT, mixed, ft_then_pt).
      prompt_dropout: dropout on prompt tokens.
      prompt_dim: prompt width before a projection (VPT); None: no projection.
      partial_k: blocks trained by `partial`.
      num_layers: the model's depth (for `partial`).
      mlp_hidden: hidden widths of the `mlp` head.
      lora_rank: rank r of `lora`.
      lora_alpha: LoRA scale numerator (default: the rank, i.e. scale 1).
    """
    builders: dict[str, Callable[[], Strategy]] = {
        "full": full,
        "linear": linear,
        "mlp": lambda: mlp(tuple(mlp_hidden)),
        "vpt_shallow": lambda: vpt(
            num_prompts, deep=False, prompt_dropout=prompt_dropout, prompt_dim=prompt_dim
        ),
        "vpt_deep": lambda: vpt(
            num_prompts, deep=True, prompt_dropout=prompt_dropout, prompt_dim=prompt_dim
        ),
        "mixed": lambda: mixed(num_prompts, prompt_dropout=prompt_dropout),
        "ft_then_pt": lambda: ft_then_pt(num_prompts, prompt_dropout=prompt_dropout),
        "partial": lambda: partial(partial_k, num_layers),
        "bias": bias,
        "lora": lambda: lora(lora_rank, lora_alpha),
    }
    if name not in builders:
        raise UserError(f"unknown strategy {name!r}; use one of: {', '.join(STRATEGIES)}")
    return builders[name]()
