"""A PyTorch re-expression of the prompted Swin forward of the official VPT code (eval mode).

Written from KMnP/vpt `src/models/vit_prompt/swin_transformer.py` (`PromptedSwinTransformer`,
`PromptedSwinTransformerBlock`, `PromptedWindowAttention`, `PromptedPatchMerging`, and
`BasicLayer.forward` of `vit_backbones/swin_transformer.py`), forward only and without dropout, so
the tests can hold `vpt_jax.models.swin` against it. It reads an official-layout state dict
(`layers.{i}.blocks.{j}.*`, the merge after stage `i` at `layers.{i}.downsample.*`) and, for VPT,
the official prompt names: `prompt_embeddings` `(1, P, C0)` and, when deep,
`deep_prompt_embeddings_{s}` (stage 0 holds `depths[0] - 1` sets, the shallow set serving its first
block). The relative position index and the shift mask are rebuilt here from the official formulas,
independently of vpt_jax's.

`per_image=False` is the official order: prompts tiled window-major against batch-major windows
(`expand(nW, ...)` then `view(-1, B, P, C).mean(0)`), so images of a batch share prompts.
`per_image=True` pairs each image's prompts with its own windows and averages over them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tests.torch_reference import torch

F = torch.nn.functional
EPS = 1e-5


def relative_position_index(window: int) -> torch.Tensor:
    """The official `WindowAttention.relative_position_index` buffer, `(w*w, w*w)`."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    flat = torch.flatten(coords, 1)
    relative = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    relative[:, :, 0] += window - 1
    relative[:, :, 1] += window - 1
    relative[:, :, 0] *= 2 * window - 1
    return relative.sum(-1)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """`(B, H, W, C)` -> `(B * nW, w, w, C)`, batch-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window, window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    b = int(windows.shape[0] / (h * w / window / window))
    x = windows.view(b, h // window, w // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def attention_mask(resolution: int, window: int, shift: int) -> torch.Tensor:
    """The official `SwinTransformerBlock.attn_mask` buffer, `(nW, w*w, w*w)` of 0 / -100."""
    image = torch.zeros((1, resolution, resolution, 1))
    label = 0
    for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            image[:, rows, cols, :] = label
            label += 1
    windows = window_partition(image, window).view(-1, window * window)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _layer_norm(sd, prefix: str, x: torch.Tensor) -> torch.Tensor:
    weight, bias = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
    return F.layer_norm(x, weight.shape, weight, bias, EPS)


def _attention(sd, prefix, x, heads, window, p, mask):
    """`PromptedWindowAttention.forward`: prompts first, zero bias and zero mask for them."""
    windows, n, c = x.shape
    qkv = F.linear(x, sd[f"{prefix}.qkv.weight"], sd[f"{prefix}.qkv.bias"])
    q, k, v = qkv.reshape(windows, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    table = sd[f"{prefix}.relative_position_bias_table"]
    bias = table[relative_position_index(window).view(-1)].view(window**2, window**2, -1)
    bias = F.pad(bias.permute(2, 0, 1), (p, 0, p, 0))
    attn = attn + bias.unsqueeze(0)
    if mask is not None:
        mask = F.pad(mask, (p, 0, p, 0))
        nw = mask.shape[0]
        attn = attn.view(windows // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, n)
    x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(windows, n, c)
    return F.linear(x, sd[f"{prefix}.proj.weight"], sd[f"{prefix}.proj.bias"])


def _block(sd, prefix, x, resolution, window, shift, heads, p, per_image):
    """`PromptedSwinTransformerBlock.forward`."""
    b, _, c = x.shape
    shortcut = x
    x = _layer_norm(sd, f"{prefix}.norm1", x)
    prompts, x = x[:, :p], x[:, p:].reshape(b, resolution, resolution, c)
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    windows = window_partition(x, window).view(-1, window * window, c)
    nw = windows.shape[0] // b
    if p:
        if per_image:
            tiled = prompts.unsqueeze(1).expand(-1, nw, -1, -1)
        else:  # the official tiling
            tiled = prompts.unsqueeze(0).expand(nw, -1, -1, -1)
        windows = torch.cat((tiled.reshape(-1, p, c), windows), dim=1)
    mask = attention_mask(resolution, window, shift) if shift else None
    attended = _attention(sd, f"{prefix}.attn", windows, heads, window, p, mask)
    prompts, attended = attended[:, :p], attended[:, p:]
    if per_image:
        prompts = prompts.reshape(b, nw, p, c).mean(1)
    else:
        prompts = prompts.reshape(nw, b, p, c).mean(0)
    x = window_reverse(attended.reshape(-1, window, window, c), window, resolution, resolution)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    x = torch.cat((prompts, x.reshape(b, resolution * resolution, c)), dim=1)
    x = shortcut + x
    y = _layer_norm(sd, f"{prefix}.norm2", x)
    y = F.gelu(F.linear(y, sd[f"{prefix}.mlp.fc1.weight"], sd[f"{prefix}.mlp.fc1.bias"]))
    return x + F.linear(y, sd[f"{prefix}.mlp.fc2.weight"], sd[f"{prefix}.mlp.fc2.bias"])


def _merge(sd, prefix, x, resolution, p):
    """`PromptedPatchMerging.forward`: prompts replicated 4x across channels, then LN and Linear."""
    b, _, c = x.shape
    prompts = x[:, :p]
    x = x[:, p:].view(b, resolution, resolution, c)
    parts = (x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2])
    x = torch.cat(parts, -1).view(b, -1, 4 * c)
    x = torch.cat((torch.cat((prompts,) * 4, dim=-1), x), dim=1)
    x = _layer_norm(sd, f"{prefix}.norm", x)
    return F.linear(x, sd[f"{prefix}.reduction.weight"])


def prompted_swin(
    state_dict: Mapping[str, np.ndarray],
    images: np.ndarray,
    *,
    depths: tuple[int, ...],
    num_heads: tuple[int, ...],
    window_size: int,
    patch_size: int,
    deep: bool = False,
    per_image: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pooled features `(B, C_last)` and logits (None without `head.weight`) of NHWC `images`.

    Without `prompt_embeddings` in the state dict, this is the plain (unprompted) Swin.
    """
    sd = {k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}
    with torch.no_grad():
        x = torch.as_tensor(images).permute(0, 3, 1, 2)
        x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], patch_size)
        resolution = x.shape[-1]
        x = _layer_norm(sd, "patch_embed.norm", x.flatten(2).transpose(1, 2))
        b = x.shape[0]
        p = 0
        if "prompt_embeddings" in sd:
            p = sd["prompt_embeddings"].shape[1]
            x = torch.cat((sd["prompt_embeddings"].expand(b, -1, -1), x), dim=1)
        for s, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            window, shift = window_size, window_size // 2
            if resolution <= window_size:  # the official clipping
                window, shift = resolution, 0
            for j in range(depth):
                if deep and (s, j) != (0, 0):  # the prompt slots take this block's set
                    prompts = sd[f"deep_prompt_embeddings_{s}"][j - 1 if s == 0 else j]
                    x = torch.cat((prompts.expand(b, -1, -1), x[:, p:]), dim=1)
                x = _block(
                    sd,
                    f"layers.{s}.blocks.{j}",
                    x,
                    resolution,
                    window,
                    shift if j % 2 else 0,
                    heads,
                    p,
                    per_image,
                )
            if s < len(depths) - 1:
                x = _merge(sd, f"layers.{s}.downsample", x, resolution, p)
                resolution //= 2
        pooled = _layer_norm(sd, "norm", x).mean(1)
        logits = (
            F.linear(pooled, sd["head.weight"], sd["head.bias"]) if "head.weight" in sd else None
        )
    return pooled.numpy(), None if logits is None else logits.numpy()
