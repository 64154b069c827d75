"""Multi-head attention dispatch: FlashAttention on CUDA when installed, PyTorch SDPA otherwise.

Both backends compute softmax(Q K^T / sqrt(D) + bias) V on (B, H, L, D) tensors. The only
bias used here is ALiBi, and it follows FlashAttention's convention for non-causal attention
so that a model trained on one backend evaluates identically on the other:

    bias[h, r, c] = -slope_h * |r + Lk - Lq - c|        (r: query index, c: key index)

That is, queries and keys are aligned at the bottom-right corner: when Lq != Lk the query
index is shifted by Lk - Lq (flash_attn_func's docstring, and `attn_bias_from_alibi_slopes`
in flash-attn's tests). In the cross-attention model Lq = G + 1 (CLS, then the G genes of
region i) and Lk = G (the genes of region j), so query gene g sits at position g and lines up
with key gene g; the CLS token sits at position -1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from xattn.errors import SpecError

try:  # flash-attn is an optional extra (pip install xattn[gpu]); CPU machines never have it
    from flash_attn import flash_attn_func

    FLASH_ATTN_AVAILABLE = True
except Exception:  # ImportError, or a build that fails to load its CUDA library
    flash_attn_func = None
    FLASH_ATTN_AVAILABLE = False

BACKENDS = ("auto", "flash", "sdpa")
FLASH_MAX_HEAD_DIM = 256  # the largest head size flash-attn 2 kernels support


def alibi_slopes(nhead: int) -> Tensor:
    """The geometric ALiBi slopes of Press et al. (2022), (nhead,) float32.

    For a power of two n the slopes are 2^(-8/n), 2^(-16/n), ..., 2^-8; otherwise the
    slopes of the nearest lower power of two are followed by every other slope of the next
    power of two (the paper's reference implementation).
    """

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(nhead))
    slopes = power_of_two_slopes(closest)
    if closest < nhead:
        slopes += power_of_two_slopes(2 * closest)[0::2][: nhead - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: Tensor, q_len: int, k_len: int) -> Tensor:
    """The additive (H, Lq, Lk) ALiBi bias, aligned as FlashAttention aligns it (see module doc)."""
    q_pos = torch.arange(q_len, device=slopes.device) + (k_len - q_len)
    k_pos = torch.arange(k_len, device=slopes.device)
    distance = (q_pos[:, None] - k_pos[None, :]).abs().to(torch.float32)
    return -slopes.to(torch.float32)[:, None, None] * distance


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """softmax(Q K^T / sqrt(D) + bias) V written out: the slow, readable reference for tests."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    return torch.softmax(scores, dim=-1) @ v


def select_backend(q: Tensor, backend: str = "auto") -> str:
    """Which kernel `attention` will use for `q`: "flash" or "sdpa"."""
    if backend not in BACKENDS:
        raise SpecError(f"unknown attention backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    flash_ok = FLASH_ATTN_AVAILABLE and q.is_cuda and q.shape[-1] <= FLASH_MAX_HEAD_DIM
    if backend == "flash" and not flash_ok:
        raise SpecError(
            "attention backend 'flash' needs flash-attn, a CUDA tensor and head size <= 256: "
            "install xattn[gpu] on a GPU machine or use backend 'auto'"
        )
    if backend == "sdpa":
        return "sdpa"
    return "flash" if flash_ok else "sdpa"


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    dropout_p: float = 0.0,
    alibi_slopes: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Multi-head attention of q (B, H, Lq, D) over k, v (B, H, Lk, D); returns (B, H, Lq, D).

    `alibi_slopes` (H,) adds FlashAttention-convention ALiBi biases. Pass dropout_p=0 in
    evaluation: like the functional kernels it wraps, this function does not know the mode.
    """
    if select_backend(q, backend) == "flash":
        return _flash(q, k, v, dropout_p, alibi_slopes)
    return _sdpa(q, k, v, dropout_p, alibi_slopes)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, slopes: Tensor | None) -> Tensor:
    mask = None
    if slopes is not None:
        # SDPA wants a float mask in the query's dtype; a leading 1 broadcasts over the batch.
        mask = alibi_bias(slopes, q.shape[-2], k.shape[-2]).to(q.dtype).unsqueeze(0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def _flash(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, slopes: Tensor | None) -> Tensor:
    """flash_attn_func wants (B, L, H, D) in fp16/bf16; fp32 inputs go through bf16 and back."""
    dtype = q.dtype
    half = dtype if dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    q, k, v = (t.transpose(1, 2).to(half) for t in (q, k, v))
    if slopes is not None:
        slopes = slopes.to(device=q.device, dtype=torch.float32)
    out = flash_attn_func(q, k, v, dropout_p=dropout_p, alibi_slopes=slopes)
    return out.transpose(1, 2).to(dtype)
