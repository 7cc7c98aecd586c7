"""A PyTorch re-expression of the official VPT training code (KMnP/vpt; the VPT-or-FT fork's solver
is identical), written from reading it, for the reference-recipe trajectory tests.

What it re-expresses, file by file:
* `src/models/vit_backbones/vit.py` + `src/models/vit_prompt/vit.py`: the ViT (pre-LN blocks named
  `attention_norm`, `attn.{query,key,value,out}`, `ffn_norm`, `ffn.{fc1,fc2}`, `encoder_norm`; exact
  GELU; LayerNorm eps 1e-6) with shallow/deep prompts (`prompt_embeddings` `(1, p, D)`,
  `deep_prompt_embeddings` `(L-1, p, D)`, inserted after the class token, deep sets *replacing* the
  previous prompt outputs before every later block).
* `src/models/vit_models.py` + `src/models/mlp.py`: the head `head.last_layer` (a Linear);
  `freeze(...)`: `prompt` trains only names with "prompt" (and the head), `end2end` trains all,
  `partial-1` the last block and `encoder_norm`.
* `src/solver/optimizer.py`: `make_optimizer` (parameter groups by name) and its own `AdamW`.
* `src/solver/lr_scheduler.py`: `WarmupCosineSchedule`, a `LambdaLR`.
* `src/engine/trainer.py`: per batch zero_grad / backward / step, `scheduler.step()` once per epoch.
* `src/solver/losses.py`: softmax cross-entropy, summed and divided by the batch size.

Weights come from a vpt_jax parameter tree (`load_flax`), so both sides start identical.
"""

from __future__ import annotations

import math

import numpy as np

from tests.torch_reference import torch

nn = torch.nn
F = torch.nn.functional


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, n, d = x.shape

        def split(t):
            return t.view(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out(context.permute(0, 2, 1, 3).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact erf GELU; dropout rates are 0 here


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.attention_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Embeddings(nn.Module):
    def __init__(self, patch: int, dim: int, tokens: int):
        super().__init__()
        self.patch_embeddings = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.position_embeddings = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x):
        x = self.patch_embeddings(x).flatten(2).transpose(-1, -2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.position_embeddings


class Encoder(nn.Module):
    def __init__(self, dim, heads, hidden, layers):
        super().__init__()
        self.layer = nn.ModuleList(Block(dim, heads, hidden) for _ in range(layers))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)


class Transformer(nn.Module):
    """`PromptedTransformer` (or the plain `Transformer` with `num_prompts=0`)."""

    def __init__(self, patch, dim, heads, hidden, layers, tokens, num_prompts, deep):
        super().__init__()
        self.embeddings = Embeddings(patch, dim, tokens)
        self.encoder = Encoder(dim, heads, hidden, layers)
        self.num_prompts, self.deep = num_prompts, deep
        if num_prompts:
            self.prompt_embeddings = nn.Parameter(torch.zeros(1, num_prompts, dim))
            if deep:
                self.deep_prompt_embeddings = nn.Parameter(
                    torch.zeros(layers - 1, num_prompts, dim)
                )

    def forward(self, x):
        h = self.embeddings(x)
        b, p = h.shape[0], self.num_prompts
        if p:
            h = torch.cat([h[:, :1], self.prompt_embeddings.expand(b, -1, -1), h[:, 1:]], dim=1)
        for i, block in enumerate(self.encoder.layer):
            if p and self.deep and i > 0:
                deep = self.deep_prompt_embeddings[i - 1].expand(b, -1, -1)
                h = torch.cat([h[:, :1], deep, h[:, 1 + p :]], dim=1)
            h = block(h)
        return self.encoder.encoder_norm(h)


class Head(nn.Module):
    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.last_layer = nn.Linear(dim, classes)


class Enc(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.transformer = Transformer(**kw)


class ViT(nn.Module):
    """`vit_models.ViT`: `enc` (the backbone; the CLS token after `encoder_norm`) and `head`."""

    def __init__(self, *, patch, dim, heads, hidden, layers, tokens, classes, num_prompts, deep):
        super().__init__()
        self.enc = Enc(
            patch=patch, dim=dim, heads=heads, hidden=hidden, layers=layers, tokens=tokens,
            num_prompts=num_prompts, deep=deep,
        )  # fmt: skip
        self.head = Head(dim, classes)

    def forward(self, x):
        return self.head.last_layer(self.enc.transformer(x)[:, 0])


def official_head_init(head: Head) -> None:
    """`MLP(special_bias=True)`: kaiming_normal_(fan_out) weights, bias -log((1 - 0.01) / 0.01)."""
    nn.init.kaiming_normal_(head.last_layer.weight, a=0, mode="fan_out")
    nn.init.constant_(head.last_layer.bias, -math.log((1 - 0.01) / 0.01))


def freeze(model: ViT, transfer_type: str) -> None:
    """`vit_models.ViT.build_backbone`'s requires_grad rules for the transfer types tested."""
    layers = len(model.enc.transformer.encoder.layer)
    for name, p in model.enc.named_parameters():
        if transfer_type == "prompt":
            p.requires_grad = "prompt" in name
        elif transfer_type == "partial-1":
            p.requires_grad = (
                f"transformer.encoder.layer.{layers - 1}" in name
                or "transformer.encoder.encoder_norm" in name
            )
        elif transfer_type != "end2end":
            raise ValueError(transfer_type)


class AdamW(torch.optim.Optimizer):
    """The official `AdamW` (`src/solver/optimizer.py`): eps 1e-6 added to sqrt(v), bias correction
    folded into the step size, then decay `p -= lr * wd * p` on the updated parameters."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                denom = v.sqrt().add_(group["eps"])
                step_size = group["lr"] * math.sqrt(1.0 - beta2 ** state["step"])
                step_size /= 1.0 - beta1 ** state["step"]
                p.addcdiv_(m, denom, value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])


def make_optimizer(model: nn.Module, optimizer: str, base_lr: float, weight_decay: float):
    """`make_optimizer`: AdamW only when weight decay > 0 (then 0.01 on names without bias),
    SGD (momentum 0.9, L2 on every trained leaf but `last_layer.bias`) otherwise."""
    params = [(k, v) for k, v in model.named_parameters() if v.requires_grad]
    if weight_decay > 0:
        if optimizer == "adamw":
            no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
            groups = [
                {
                    "params": [p for n, p in params if not any(nd in n for nd in no_decay)],
                    "weight_decay": 0.01,
                },
                {
                    "params": [p for n, p in params if any(nd in n for nd in no_decay)],
                    "weight_decay": 0.0,
                },
            ]
            return AdamW(groups, lr=base_lr)
        groups = [
            {
                "params": [v],
                "lr": base_lr,
                "weight_decay": 0.0 if "last_layer.bias" in k else weight_decay,
            }
            for k, v in params
        ]
        return torch.optim.SGD(groups, base_lr, momentum=0.9, weight_decay=weight_decay)
    groups = [{"params": [v], "lr": base_lr} for _, v in params]
    return torch.optim.SGD(groups, base_lr, momentum=0.9)


class WarmupCosineSchedule(torch.optim.lr_scheduler.LambdaLR):
    """Linear warmup over `warmup_steps` (here: epochs), then cosine decay to `t_total`."""

    def __init__(self, optimizer, warmup_steps, t_total, cycles=0.5):
        self.warmup_steps, self.t_total, self.cycles = warmup_steps, t_total, cycles
        super().__init__(optimizer, self.lr_lambda)

    def lr_lambda(self, step):
        if step < self.warmup_steps:
            return float(step) / float(max(1.0, self.warmup_steps))
        progress = float(step - self.warmup_steps) / float(max(1, self.t_total - self.warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(self.cycles) * 2.0 * progress)))


def train(model, images, labels, epoch_batches, *, optimizer, base_lr, weight_decay, warmup):
    """`Trainer.train_classifier` without evaluation: returns (per-step losses, per-step lrs).

    Args:
      images: float NCHW model inputs; labels: int64.
      epoch_batches: per epoch, the list of index arrays of its steps.
    """
    opt = make_optimizer(model, optimizer, base_lr, weight_decay)
    scheduler = WarmupCosineSchedule(opt, warmup, len(epoch_batches))
    losses, rates = [], []
    for batches in epoch_batches:
        model.train()
        for idx in batches:
            logits = model(images[idx])
            loss = F.cross_entropy(logits, labels[idx], reduction="none").sum() / len(idx)
            rates.append(opt.param_groups[0]["lr"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        scheduler.step()
    return np.asarray(losses), np.asarray(rates)


def load_flax(model: ViT, flat: dict[str, np.ndarray]) -> None:
    """Copies a vpt_jax parameter tree (flattened, `/`-joined) into the torch model."""
    t = model.enc.transformer
    as_t = lambda a: torch.tensor(np.asarray(a, np.float32))
    with torch.no_grad():
        t.embeddings.patch_embeddings.weight.copy_(
            as_t(flat["embedding/kernel"]).permute(3, 2, 0, 1)
        )
        t.embeddings.patch_embeddings.bias.copy_(as_t(flat["embedding/bias"]))
        t.embeddings.cls_token.copy_(as_t(flat["cls"]))
        t.embeddings.position_embeddings.copy_(
            as_t(flat["Transformer/posembed_input/pos_embedding"])
        )
        for i, block in enumerate(t.encoder.layer):
            pre = f"Transformer/encoderblock_{i}/"
            for norm, name in (
                (block.attention_norm, "LayerNorm_0"),
                (block.ffn_norm, "LayerNorm_2"),
            ):
                norm.weight.copy_(as_t(flat[pre + name + "/scale"]))
                norm.bias.copy_(as_t(flat[pre + name + "/bias"]))
            att = pre + "MultiHeadDotProductAttention_1/"
            for name in ("query", "key", "value"):
                kernel = as_t(flat[att + name + "/kernel"])
                getattr(block.attn, name).weight.copy_(kernel.reshape(kernel.shape[0], -1).T)
                getattr(block.attn, name).bias.copy_(as_t(flat[att + name + "/bias"]).reshape(-1))
            out = as_t(flat[att + "out/kernel"])
            block.attn.out.weight.copy_(out.reshape(-1, out.shape[-1]).T)
            block.attn.out.bias.copy_(as_t(flat[att + "out/bias"]))
            mlp = pre + "MlpBlock_3/"
            block.ffn.fc1.weight.copy_(as_t(flat[mlp + "Dense_0/kernel"]).T)
            block.ffn.fc1.bias.copy_(as_t(flat[mlp + "Dense_0/bias"]))
            block.ffn.fc2.weight.copy_(as_t(flat[mlp + "Dense_1/kernel"]).T)
            block.ffn.fc2.bias.copy_(as_t(flat[mlp + "Dense_1/bias"]))
        t.encoder.encoder_norm.weight.copy_(as_t(flat["Transformer/encoder_norm/scale"]))
        t.encoder.encoder_norm.bias.copy_(as_t(flat["Transformer/encoder_norm/bias"]))
        if t.num_prompts:
            sets = as_t(flat["Transformer/prompt/embeddings"])
            t.prompt_embeddings.copy_(sets[:1])
            if t.deep:
                t.deep_prompt_embeddings.copy_(sets[1:])
        model.head.last_layer.weight.copy_(as_t(flat["head/kernel"]).T)
        model.head.last_layer.bias.copy_(as_t(flat["head/bias"]))
