"""The attention dispatch: SDPA matches the written-out formula, ALiBi follows flash-attn."""

import importlib

import pytest
import torch

from xattn.errors import SpecError
from xattn.models.attention import (
    FLASH_ATTN_AVAILABLE,
    alibi_bias,
    alibi_slopes,
    attention,
    explicit_attention,
    select_backend,
)

# The package re-exports the function `attention`, which shadows the submodule's attribute.
attn_mod = importlib.import_module("xattn.models.attention")


def qkv(lq=7, lk=6, b=2, h=4, d=8, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    make = lambda L: torch.randn(b, h, L, d, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    return make(lq), make(lk), make(lk)


@pytest.mark.parametrize("lq,lk", [(6, 6), (7, 6), (4, 9)])
def test_sdpa_matches_explicit_attention(lq, lk):
    q, k, v = qkv(lq, lk)
    out = attention(q, k, v, backend="sdpa")
    assert out.shape == q.shape
    torch.testing.assert_close(out, explicit_attention(q, k, v), atol=1e-5, rtol=0)


@pytest.mark.parametrize("lq,lk", [(6, 6), (7, 6), (4, 9)])
def test_sdpa_with_alibi_matches_explicit_attention(lq, lk):
    q, k, v = qkv(lq, lk)
    slopes = alibi_slopes(4)
    out = attention(q, k, v, alibi_slopes=slopes, backend="sdpa")
    ref = explicit_attention(q, k, v, bias=alibi_bias(slopes, lq, lk))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert not torch.allclose(out, attention(q, k, v, backend="sdpa"), atol=1e-3)


def test_alibi_bias_follows_flash_attn_bottom_right_alignment():
    # flash-attn (non-causal): bias = -slope * |r + Lk - Lq - c|. With Lq = Lk + 1 (CLS then
    # genes of region i vs genes of region j) query r + 1 lines up with key r.
    slopes = torch.tensor([0.5, 0.25])
    bias = alibi_bias(slopes, q_len=4, k_len=3)
    assert bias.shape == (2, 4, 3)
    for r in range(4):
        for c in range(3):
            assert bias[0, r, c] == -0.5 * abs(r + 3 - 4 - c)
    assert torch.all(bias[:, 1:].diagonal(dim1=1, dim2=2) == 0)
    distance = (torch.arange(3)[:, None] - torch.arange(3)).abs().float()
    torch.testing.assert_close(alibi_bias(slopes, 3, 3)[1], -0.25 * distance)


def test_alibi_slopes_are_the_standard_geometric_ones():
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2**-2, 2**-4, 2**-6, 2**-8]))
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # Not a power of two: the 4-head slopes, then every other slope of the 8-head set.
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]))


def test_dispatch_picks_sdpa_on_cpu_even_with_flash_installed(monkeypatch):
    q, _, _ = qkv()
    monkeypatch.setattr(attn_mod, "FLASH_ATTN_AVAILABLE", True)
    assert select_backend(q, "auto") == "sdpa"
    assert select_backend(q, "sdpa") == "sdpa"
    with pytest.raises(SpecError, match="flash"):
        select_backend(q, "flash")
    with pytest.raises(SpecError, match="choose one of"):
        select_backend(q, "triton")


def test_forcing_flash_without_it_is_a_one_line_spec_error():
    q, k, v = qkv()
    if not (FLASH_ATTN_AVAILABLE and torch.cuda.is_available()):
        with pytest.raises(SpecError) as err:
            attention(q, k, v, backend="flash")
        assert "\n" not in str(err.value)


def test_sdpa_with_alibi_under_cpu_autocast_runs_in_bf16():
    q, k, v = qkv()
    slopes = alibi_slopes(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v, alibi_slopes=slopes)
    assert out.dtype == torch.bfloat16
    ref = explicit_attention(q, k, v, bias=alibi_bias(slopes, 7, 6))
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=0)


needs_flash = pytest.mark.skipif(
    not (FLASH_ATTN_AVAILABLE and torch.cuda.is_available()), reason="needs CUDA and flash-attn"
)


@needs_flash
@pytest.mark.parametrize("use_alibi", [False, True])
@pytest.mark.parametrize("lq,lk", [(65, 64), (64, 64), (33, 80)])
def test_flash_matches_sdpa_in_bf16(use_alibi, lq, lk):
    q, k, v = qkv(lq, lk, b=3, h=4, d=32, dtype=torch.bfloat16, device="cuda")
    slopes = alibi_slopes(4).cuda() if use_alibi else None
    flash = attention(q, k, v, alibi_slopes=slopes, backend="flash")
    sdpa = attention(q, k, v, alibi_slopes=slopes, backend="sdpa")
    assert select_backend(q) == "flash"
    torch.testing.assert_close(flash.float(), sdpa.float(), atol=2e-2, rtol=0)


@needs_flash
def test_flash_casts_fp32_through_bf16_and_back():
    q, k, v = qkv(65, 64, d=32, device="cuda")
    out = attention(q, k, v, alibi_slopes=alibi_slopes(4).cuda(), backend="flash")
    assert out.dtype == torch.float32
    ref = attention(q, k, v, alibi_slopes=alibi_slopes(4).cuda(), backend="sdpa")
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=0)
