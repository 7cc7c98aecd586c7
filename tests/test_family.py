"""The seam between backbones and strategies: additions declare, families place, strategies name."""

from __future__ import annotations

import dataclasses
import re

import pytest

from vpt_jax import paths
from vpt_jax.errors import UserError
from vpt_jax.models import additions
from vpt_jax.models.additions import LoRA, MLPHead, Prompts
from vpt_jax.models.family import VIT, VIT_LAYOUT, ParamLayout, family_of
from vpt_jax.models.vit import VisionTransformer, param_shapes
from vpt_jax.tuning.rules import label_paths
from vpt_jax.tuning.strategies import get_strategy

# A made-up family's layout: other module names for the same parts.
TOY = ParamLayout(
    head="classifier",
    final_norm="trunk/norm",
    block="trunk/layer{}",
    sites=((additions.TOKENS, "trunk"), (additions.HEAD, "")),
    identity=("stem/kernel",),
)
TOY_KEYS = [
    "stem/kernel",
    *(f"trunk/layer{i}/{leaf}" for i in range(4) for leaf in ("w/kernel", "w/bias")),
    "trunk/norm/scale",
    "trunk/norm/bias",
    "trunk/prompt/embeddings",
    "classifier/kernel",
    "classifier/bias",
]


def test_additions_own_their_paths_under_the_family_sites():
    assert VIT_LAYOUT.owned(Prompts(3)) == "Transformer/prompt/.*"
    assert VIT_LAYOUT.owned(LoRA(2)) == (
        r"Transformer/encoderblock_\d+/MultiHeadDotProductAttention_1/(query|value)_lora/[ab]"
    )
    assert VIT_LAYOUT.owned(MLPHead((8,))) == r"head_mlp_\d+/.*"
    assert TOY.owned(Prompts(3)) == "trunk/prompt/.*"
    fresh = VIT_LAYOUT.fresh((Prompts(2), LoRA(2)))
    key = "Transformer/encoderblock_3/MultiHeadDotProductAttention_1/value_lora/b"
    assert any(re.fullmatch(p, key) for p in fresh)
    assert any(re.fullmatch(p, "head/kernel") for p in fresh)
    assert not any(re.fullmatch(p, "Transformer/encoder_norm/scale") for p in fresh)


def test_a_family_without_a_site_refuses_what_attaches_there():
    with pytest.raises(UserError, match="attaches at the 'attention' site, which this backbone"):
        TOY.owned(LoRA(2))
    with pytest.raises(UserError, match="attention"):
        get_strategy("lora", lora_rank=2, layout=TOY)


def test_strategies_name_parts_through_the_layout(tiny_config):
    labels = label_paths(
        TOY_KEYS, get_strategy("partial", partial_k=2, num_layers=4, layout=TOY).rules
    )
    trained = {k for k, v in labels.items() if v != "frozen"}
    assert trained == {
        *(f"trunk/layer{i}/{leaf}" for i in (2, 3) for leaf in ("w/kernel", "w/bias")),
        "trunk/norm/scale",
        "trunk/norm/bias",
        "classifier/kernel",
        "classifier/bias",
    }
    assert labels["trunk/layer3/w/bias"] == "no_decay"
    vpt = label_paths(TOY_KEYS, get_strategy("vpt_deep", num_prompts=2, layout=TOY).rules)
    assert {k for k, v in vpt.items() if v != "frozen"} == {
        "trunk/prompt/embeddings",
        "classifier/kernel",
        "classifier/bias",
    }
    # A strategy for one family does not build another family's model.
    with pytest.raises(UserError, match="built for another backbone family than vit"):
        get_strategy("vpt_deep", num_prompts=2, layout=TOY).build_model(tiny_config, 3)


def test_the_vit_attaches_each_addition_at_its_site(tiny_config):
    model = VIT.build_model(tiny_config, 3, (Prompts(2, deep=True), LoRA(2), MLPHead((8,))))
    assert isinstance(model, VisionTransformer) and family_of(tiny_config) is VIT
    assert model.extra_tokens == 2
    keys = list(paths.flatten(param_shapes(model)))
    for addition in model.additions:
        owned = [k for k in keys if re.fullmatch(VIT_LAYOUT.owned(addition), k)]
        assert owned, addition
    assert sum("_lora/" in k for k in keys) == 2 * 2 * tiny_config.num_layers
    assert {k for k in keys if k.startswith("head_mlp_")} == {
        "head_mlp_0/kernel",
        "head_mlp_0/bias",
    }
    with pytest.raises(TypeError, match="no backbone family has configs of type dict"):
        family_of({})


@pytest.mark.parametrize(
    "addition", [Prompts(3, deep=True, dropout=0.1, dim=8), LoRA(4, 2.0), MLPHead((16, 8))]
)
def test_additions_round_trip_through_their_dicts(addition):
    data = addition.to_dict()
    assert data["kind"] == addition.kind
    # As JSON gives it back: tuples become lists.
    listed = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
    assert additions.from_dict(listed) == addition
    assert hash(additions.from_dict(listed)) == hash(addition)  # part of a static model


def test_an_addition_must_declare_its_paths():
    @dataclasses.dataclass(frozen=True)
    class Undeclared(additions.Addition):
        kind = "undeclared"
        site = additions.HEAD

    with pytest.raises(TypeError, match="abstract"):
        Undeclared()
