"""The `reference` recipe trains like the official VPT code, step for step.

A tiny ViT trains for 4 epochs of 4 steps (the last one short, warmup over 2 epochs, so the warmup
crosses an epoch boundary and the first epoch runs at rate 0) in vpt_jax, through the trainer's
own compiled step and optimizer, and in `tests/vpt_official_solver.py` (a PyTorch re-expression of
the official optimizer construction, its AdamW, its per-epoch LambdaLR, loss and freezing), from
identical weights, prompts, head and data order. Asserted: per-step loss within 1e-5 relative,
final trained parameters within 1e-5 relative L2, and the learning rate of every step equal (to
float32 rounding). Dropout is 0 on both sides (random masks cannot match across frameworks); where
dropout runs is tested separately.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpt_jax import paths, recipe
from vpt_jax.config import base_config
from vpt_jax.data.pipeline import epoch_batch_indices
from vpt_jax.models.vit import VPT_HEAD_BIAS, ViTConfig, init_params
from vpt_jax.train import feed, stage, step
from vpt_jax.train.setup import build_run
from vpt_jax.tuning.rules import split

N, BATCH, EPOCHS, WARMUP, CLASSES, SEED = 20, 6, 4, 2, 3, 42
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _config(strategy: str, lr: float, wd: float, recipe_name: str = "reference"):
    c = base_config()
    c.recipe = recipe_name
    m = c.model
    m.variant, m.patch_size, m.hidden_size, m.num_layers, m.num_heads, m.mlp_dim = (
        "custom", 4, 16, 3, 2, 32,
    )  # fmt: skip
    m.image_size = 8
    m.dropout_rate = 0.0  # the masks cannot match; dropout sites are tested below
    c.strategy.name, c.strategy.num_prompts, c.strategy.partial_k = strategy, 2, 1
    c.strategy.prompt_dropout = 0.0
    c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.warmup_epochs = lr, wd, WARMUP
    c.train.epochs, c.train.batch_size, c.train.seed = EPOCHS, BATCH, SEED
    return c


def _data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, size=N).astype(np.int32)
    return images, labels


def _initial(setup):
    plan = setup.stages[0]
    model = plan.strategy.build_model(setup.backbone, CLASSES)
    params = jax.device_get(init_params(model, 7))
    # A pretrained-looking backbone: the random init's zero cls and position table would hide
    # their decay; the head keeps the recipe's init.
    flat = paths.flatten(params)
    rng = np.random.default_rng(1)
    for key in ("cls", "Transformer/posembed_input/pos_embedding"):
        flat[key] = rng.normal(0, 0.2, flat[key].shape).astype(np.float32)
    return plan, model, paths.unflatten(flat)


def train_vpt_jax(c):
    """The trainer's own pieces: build_run's plan, its Schedule and compiled step."""
    setup = build_run(c, 1)
    plan, model, params = _initial(setup)
    mesh = feed.make_mesh()
    rates = stage.Schedule.create(plan, N, BATCH)
    aug = step.Augmentation(setup.config.data.normalization)
    program = stage.train_program(plan, model, params, rates, aug, mesh)
    tx = program.tx(rates.peak, plan.optimizer.weight_decay)
    state = step.TrainState.create(params, tx, jax.random.key(0))
    images, labels = _data()
    arrays = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    losses, lrs, order = [], [], []
    for epoch in range(1, EPOCHS + 1):
        indices, mask = epoch_batch_indices(N, BATCH, seed=SEED, epoch=epoch)
        order.append([idx[m] for idx, m in zip(indices, mask, strict=True)])
        for idx, m in zip(indices, mask, strict=True):
            lrs.append(rates.rate(int(state.step)))
            sums = jnp.zeros(3, jnp.float32)
            state, sums = step.train_on_indices(
                state, sums, arrays, jnp.asarray(idx), jnp.asarray(m), program=program
            )
            loss_sum, _, count = np.asarray(sums)
            losses.append(loss_sum / count)
    return (
        setup,
        plan,
        params,
        jax.device_get(state.params),
        np.asarray(losses),
        np.asarray(lrs),
        order,
    )


def train_official(plan, params, order, *, transfer_type, optimizer, base_lr, weight_decay):
    from tests import vpt_official_solver as official

    torch = official.torch
    prompts = next((a for a in plan.strategy.additions if hasattr(a, "deep")), None)
    model = official.ViT(
        patch=4, dim=16, heads=2, hidden=32, layers=3, tokens=4, classes=CLASSES,
        num_prompts=prompts.count if prompts else 0, deep=bool(prompts and prompts.deep),
    )  # fmt: skip
    official.load_flax(model, paths.flatten(params))
    official.freeze(model, transfer_type)
    images, labels = _data()
    x = torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    y = torch.tensor(labels, dtype=torch.int64)
    batches = [[torch.tensor(i, dtype=torch.int64) for i in epoch] for epoch in order]
    losses, lrs = official.train(
        model, x, y, batches, optimizer=optimizer, base_lr=base_lr,
        weight_decay=weight_decay, warmup=WARMUP,
    )  # fmt: skip
    return model, losses, lrs


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


CASES = {
    # VPT-deep with SGD and weight decay > 0: prompts and head kernel decay, the head bias not.
    "vpt_deep_sgd": ("vpt_deep", 2.5, 0.01, "prompt", "sgd"),
    # FT with AdamW and weight decay > 0: the official AdamW at decay 0.01 whatever is configured.
    "full_adamw": ("full", 0.05, 0.0001, "end2end", "adamw"),
    # FT with AdamW and weight decay 0: the official code silently trains SGD instead.
    "full_adamw_wd0": ("full", 0.5, 0.0, "end2end", "adamw"),
    # Partial-1 with SGD: the official decay set (block biases decay too, unlike the clean one).
    "partial1_sgd": ("partial", 2.5, 0.01, "partial-1", "sgd"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_reference_recipe_trains_like_the_official_code(case):
    strategy, lr, wd, transfer_type, optimizer = CASES[case]
    c = _config(strategy, lr, wd)
    setup, plan, initial, final, losses, lrs, order = train_vpt_jax(c)
    model, t_losses, t_lrs = train_official(
        plan, initial, order, transfer_type=transfer_type, optimizer=optimizer,
        base_lr=lr * BATCH / 256, weight_decay=wd,
    )  # fmt: skip
    assert len(losses) == EPOCHS * math.ceil(N / BATCH) == len(t_losses)
    np.testing.assert_allclose(np.float32(lrs), np.float32(t_lrs), rtol=1e-6, atol=0)
    assert lrs[0] == 0 and lrs[-1] > 0  # epoch 1 at rate 0, the cosine never reaches it
    np.testing.assert_allclose(losses, t_losses, rtol=1e-5)

    # Every trained leaf, compared in the torch model's names.
    from tests import vpt_official_solver as official

    ours = official.ViT(
        patch=4, dim=16, heads=2, hidden=32, layers=3, tokens=4, classes=CLASSES,
        num_prompts=model.enc.transformer.num_prompts, deep=model.enc.transformer.deep,
    )  # fmt: skip
    official.load_flax(ours, paths.flatten(final))
    start = official.ViT(
        patch=4, dim=16, heads=2, hidden=32, layers=3, tokens=4, classes=CLASSES,
        num_prompts=model.enc.transformer.num_prompts, deep=model.enc.transformer.deep,
    )  # fmt: skip
    official.load_flax(start, paths.flatten(initial))
    mine, theirs, before = (dict(m.named_parameters()) for m in (ours, model, start))
    trained = [k for k, v in theirs.items() if v.requires_grad]
    assert trained and all(not v.requires_grad for k, v in theirs.items() if k not in trained)
    flat = lambda params: np.concatenate([params[k].detach().numpy().ravel() for k in trained])
    assert rel_l2(flat(mine), flat(theirs)) < 1e-5
    assert rel_l2(flat(theirs), flat(before)) > 1e-3  # training moved them far beyond that
    for key in trained:
        # The attention key bias has an exactly zero gradient (softmax ignores a shift shared by
        # all keys): both sides move it by float noise, which Adam normalises to steps of the
        # rate. It counts in the whole-vector comparison above, not leaf by leaf.
        if key.endswith("attn.key.bias"):
            continue
        a, b = mine[key].detach().numpy(), theirs[key].detach().numpy()
        moved = rel_l2(b, before[key].detach().numpy())
        assert moved > 1e-4, (key, moved)  # training changed it far beyond the tolerance
        assert rel_l2(a, b) < 1e-5, (key, rel_l2(a, b))
    frozen = [k for k in theirs if k not in trained]
    for key in frozen:  # and nothing else moved
        np.testing.assert_array_equal(mine[key].detach().numpy(), before[key].detach().numpy())
    if case == "full_adamw_wd0":
        assert plan.optimizer.name == "sgd" and plan.optimizer.weight_decay == 0
    if case == "full_adamw":
        assert plan.optimizer.name == "adamw" and plan.optimizer.weight_decay == 0.01


def test_the_clean_recipe_does_not_train_like_the_official_code():
    """The comparison can fail: the clean recipe (per-step schedule, optax AdamW, configured decay)
    drifts from the official trajectory far beyond the tolerance."""
    strategy, lr, wd, transfer_type, optimizer = CASES["full_adamw"]
    c = _config(strategy, lr, wd)
    for field in ("model.gelu_approximate", "data.normalization"):  # keep only optimizer parts
        section, name = field.split(".")
        c[section][name] = recipe.RECIPES["reference"][field]
    c.model.head_init = "vpt"
    c.recipe = "clean"
    _, plan, initial, _, losses, lrs, order = train_vpt_jax(c)
    _, t_losses, t_lrs = train_official(
        plan, initial, order, transfer_type=transfer_type, optimizer=optimizer,
        base_lr=lr * BATCH / 256, weight_decay=wd,
    )  # fmt: skip
    assert lrs[1] > 0 and t_lrs[1] == 0  # per step: warming up from step 1; per epoch: not
    assert np.max(np.abs(losses - t_losses) / np.abs(t_losses)) > 1e-3


def test_recipes_resolve_unset_fields_and_keep_set_ones():
    c = base_config()
    clean = recipe.resolve(c)
    assert clean.model.gelu_approximate is True and clean.data.normalization == "inception"
    assert clean.optimizer.eps == 1e-8 and clean.model.head_init == "zeros"
    c.recipe = "reference"
    c.model.gelu_approximate = True  # one part overridden
    ref = recipe.resolve(c)
    assert ref.model.gelu_approximate is True
    assert ref.data.normalization == "imagenet" and ref.model.dropout_rate == 0.1
    assert ref.optimizer.schedule_unit == "epoch" and ref.optimizer.adamw == "vpt"
    assert recipe.resolve(ref).to_dict() == ref.to_dict()  # idempotent
    assert set(recipe.RECIPES["clean"]) == set(recipe.RECIPES["reference"])


def test_reference_prompt_dropout_follows_the_prompts_depth():
    for name, expected in (("vpt_deep", 0.1), ("vpt_shallow", 0.0), ("mixed", 0.1)):
        c = base_config()
        c.recipe, c.strategy.name = "reference", name
        c.model.variant, c.model.image_size = "Ti/16", 32
        prompts = build_run(c, 1).strategy.final.additions[0]
        assert prompts.dropout == expected, name
    c.strategy.prompt_dropout = 0.0  # set: kept
    assert build_run(c, 1).strategy.final.additions[0].dropout == 0.0


def test_vpt_head_init_is_kaiming_fan_out_with_the_official_bias():
    from tests.torch_reference import torch

    cfg = ViTConfig(4, 768, 1, 2, 32, 8, head_init="vpt")
    from vpt_jax.models.vit import VisionTransformer

    head = paths.flatten(jax.device_get(init_params(VisionTransformer(cfg, 100), 0)))
    np.testing.assert_array_equal(head["head/bias"], np.full(100, VPT_HEAD_BIAS, np.float32))
    assert pytest.approx(-4.59511985) == VPT_HEAD_BIAS
    weight = torch.empty(100, 768)
    torch.manual_seed(0)
    torch.nn.init.kaiming_normal_(weight, a=0, mode="fan_out")
    expected = math.sqrt(2 / 100)  # fan_out of torch's (out, in) weight is the class count
    assert np.std(head["head/kernel"]) == pytest.approx(expected, rel=0.01)
    assert float(weight.std()) == pytest.approx(expected, rel=0.01)
    assert abs(np.mean(head["head/kernel"])) < 0.01 * expected * 10


def _dropout_sites(c) -> list[tuple[str, float]]:
    """(module path, rate) of every dropout that can drop something in a training forward."""
    setup = build_run(c, 1)
    plan = setup.stages[0]
    model = plan.strategy.build_model(setup.backbone, CLASSES)
    params = init_params(model, 0)
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
            deterministic = kwargs.get("deterministic", context.module.deterministic)
            if not deterministic and context.module.rate > 0:
                seen.append(("/".join(context.module.path), context.module.rate))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply(
            {"params": params}, jnp.zeros((2, 8, 8, 3)), train=True,
            backbone_train=plan.strategy.backbone_dropout, rngs={"dropout": jax.random.key(0)},
        )  # fmt: skip
    return seen


def test_reference_dropout_runs_where_the_official_code_drops():
    full = _config("full", 0.001, 0.0)
    full.model.dropout_rate = None  # the recipe's 0.1
    sites = _dropout_sites(full)
    # Embeddings and both MLP layers of each block at 0.1; nothing after attention (the official
    # `proj_dropout` takes the attention rate, 0), nothing on attention weights.
    assert [r for _, r in sites] == [0.1] * (1 + 2 * 3)
    assert sites[0][0] == "Transformer/Dropout_0"
    assert all("MlpBlock_3" in p for p, _ in sites[1:])
    clean = _config("full", 0.001, 0.0, "clean")
    clean.model.dropout_rate = 0.1
    assert len(_dropout_sites(clean)) == 1 + 3 * 3  # google's ViT also drops the attention output
    # Frozen or prompted backbones run deterministic; deep prompts drop at 0.1.
    for name in ("vpt_deep", "linear", "partial", "mixed", "bias"):
        c = _config(name, 0.1, 0.0)
        c.model.dropout_rate, c.strategy.prompt_dropout = None, None
        rates = _dropout_sites(c)
        if name in ("vpt_deep", "mixed"):
            assert [r for _, r in rates] == [0.1] * 3, (name, rates)
        else:
            assert rates == [], (name, rates)


def test_vpt_decay_labels_follow_the_official_names():
    from vpt_jax.tuning.rules import DECAY, FROZEN, NO_DECAY, label_tree, vpt_decay_labels
    from vpt_jax.tuning.strategies import get_strategy

    strategy = get_strategy("partial", partial_k=1, num_layers=2)
    model = strategy.build_model(ViTConfig(4, 16, 2, 2, 32, 8), 3)
    labels = label_tree(init_params(model, 0), strategy.rules)
    flat = paths.flatten(labels)
    bias = "Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"
    assert flat[bias] == NO_DECAY and flat["Transformer/encoderblock_0/LayerNorm_0/bias"] == FROZEN
    sgd = paths.flatten(vpt_decay_labels(labels, "sgd", "head"))
    adamw = paths.flatten(vpt_decay_labels(labels, "adamw", "head"))
    assert sgd[bias] == DECAY and sgd["head/bias"] == NO_DECAY and sgd["head/kernel"] == DECAY
    assert adamw[bias] == NO_DECAY and adamw["Transformer/encoder_norm/scale"] == DECAY
    assert {k for k, v in sgd.items() if v == FROZEN} == {k for k, v in flat.items() if v == FROZEN}
    trainable, _ = split(init_params(model, 0), labels)
    assert len(paths.flatten(trainable)) == sum(v != FROZEN for v in sgd.values())


def test_reference_studies_train_each_distinct_setting_once_at_the_papers_batch():
    import importlib.util
    import os

    from vpt_jax.errors import UserError
    from vpt_jax.study import protocol

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "study", "vtab.py")
    spec = importlib.util.spec_from_file_location("study_vtab", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("tasks=dtd,strategies=full+vpt_deep")
    assert c.run.recipe == "reference"
    specs = protocol.search_specs(c.study, {}, c.run)
    full = [s for s in specs if s.strategy == "full"]
    assert sorted({s.weight_decay for s in full}) == [0.0, 0.01] and len(full) == 4 * 2
    assert len([s for s in specs if s.strategy == "vpt_deep"]) == 10 * 4  # SGD: all distinct
    by_strategy = {s.strategy: protocol.run_config(c, s) for s in specs}
    assert by_strategy["full"].train.batch_size == 128
    assert by_strategy["full"].optimizer.warmup_epochs == 5
    assert by_strategy["vpt_deep"].train.batch_size == 64
    assert by_strategy["vpt_deep"].optimizer.warmup_epochs == 10
    sgd = build_run(protocol.run_config(c, next(s for s in full if s.weight_decay == 0)), 1,
                    read_weights=False)  # fmt: skip
    assert sgd.stages[0].optimizer.name == "sgd"

    clean = module.get_config("tasks=dtd,strategies=full,recipe=clean")
    assert clean.run.recipe == "clean"
    full = protocol.search_specs(clean.study, {}, clean.run)
    assert len(full) == 16 and protocol.run_config(clean, full[0]).train.batch_size == 64

    c.run.train.batch_size = 32  # the recipe's grid batch would replace it silently: refused
    with pytest.raises(UserError, match=r"study.grids.finetune.batch_size"):
        protocol.check_template(c.run, module.get_config().run, c.study.grids)
    c.study.grids.finetune.batch_size = c.study.grids.prompt.batch_size = 32
    protocol.check_template(c.run, module.get_config().run, c.study.grids)


def test_unknown_recipe_is_one_clear_error():
    from vpt_jax.errors import UserError

    c = base_config()
    c.recipe = "paper"
    with pytest.raises(UserError, match="unknown recipe 'paper'; use one of: clean, reference"):
        build_run(c, 1, read_weights=False)
    c.recipe, c.optimizer.schedule_unit = "clean", "epochs"
    with pytest.raises(
        UserError, match="optimizer.schedule_unit='epochs' is not one of step, epoch"
    ):
        build_run(c, 1, read_weights=False)
