"""The naive reference trainer that `benchmarks.throughput` measures xattn's trainer against.

It is written the straightforward way, as one would without xattn's trainer:

- a torch `Dataset` whose item is one pair: the two regions' expression rows, their two
  coordinate rows and the target connectivity value;
- a `DataLoader` (shuffle, `num_workers=0`, the trainer's batch size, default collation);
- a forward pass that encodes *both* regions of *every* pair (B pairs -> 2B region rows, no
  per-region deduplication, no caching), in fp32;
- AdamW on the MSE, like the trainer.

It runs the very modules of an xattn model (`naive_forward` calls its submodules), so the
weights are identical by construction; `tests/test_benchmarks_naive.py` checks that the naive
forward and gradients equal xattn's `model(expression, coords, pair_i, pair_j)`.

What xattn's forward does differently (and the benchmark measures the value of): its
`forward` takes the whole expression matrix and index pairs, encodes each unique region of
the batch once and (cross-attention) projects each unique j region's keys/values once per
block before gathering them per pair; its trainer keeps all data on the device and builds a
batch by slicing index pairs, with no per-pair Python and no collation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from xattn.models.cross_attention import CrossAttentionGene2VecModel
from xattn.models.self_attention import (
    SharedSelfAttentionGene2VecModel,
    SharedSelfAttentionModel,
    SharedSelfAttentionPoolingModel,
)

# The self-attention families: one skeleton (tokens, encoder, readout, predict_pair).
SELF_ATTENTION_MODELS = (SharedSelfAttentionModel, SharedSelfAttentionPoolingModel, SharedSelfAttentionGene2VecModel)

__all__ = ["NaiveTrainer", "PairDataset", "naive_forward", "naive_loader"]


class PairDataset(Dataset):
    """One item per region pair (i, j): (expression_i, expression_j, coords_i, coords_j, target).

    Holds the (R, G) expression, (R, 3) coords and (R, R) connectivity of all regions and a
    (P, 2) tensor of pairs; everything stays on the CPU, as a typical Dataset does.
    """

    def __init__(self, expression: Tensor, coords: Tensor, connectivity: Tensor, pairs: Tensor) -> None:
        self.expression = expression.detach().float().cpu()
        self.coords = coords.detach().float().cpu()
        self.connectivity = connectivity.detach().float().cpu()
        self.pairs = pairs.detach().long().cpu()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        i, j = (int(v) for v in self.pairs[index])
        return self.expression[i], self.expression[j], self.coords[i], self.coords[j], self.connectivity[i, j]


def naive_loader(dataset: PairDataset, batch_size: int, *, seed: int = 0, drop_last: bool = True) -> DataLoader:
    """A shuffling DataLoader without workers, seeded so the pair order is reproducible."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=0, drop_last=drop_last, generator=generator
    )


def naive_forward(
    model: nn.Module, expression_i: Tensor, expression_j: Tensor, coords_i: Tensor, coords_j: Tensor
) -> Tensor:
    """Predictions (B,) of `model` for B pairs given per pair: (B, G) expression and (B, 3) coords
    of each side. Both regions of every pair are encoded (2B region rows), nothing is shared."""
    if isinstance(model, CrossAttentionGene2VecModel):
        return model.forward_naive(expression_i, expression_j, coords_i, coords_j)
    if isinstance(model, SELF_ATTENTION_MODELS):
        return _self_attention(model, expression_i, expression_j)
    raise TypeError(f"no naive forward for {type(model).__name__}: only the attention families have one")


def _self_attention(model: nn.Module, expression_i: Tensor, expression_j: Tensor) -> Tensor:
    batch = len(expression_i)
    h = model.readout(model.encoder(model.tokens(torch.cat([expression_i, expression_j]))))  # (2B, D)
    return model.predict_pair(h[:batch], h[batch:])  # combine, MLP head, optional clamp


class NaiveTrainer:
    """AdamW on the MSE over batches from a `naive_loader`, fp32, one optimizer step per batch.

    `train_batches(n)` runs n steps, cycling through the loader (a new shuffle each pass).
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: PairDataset,
        *,
        batch_size: int,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.01,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.loader = naive_loader(dataset, batch_size, seed=seed, drop_last=len(dataset) >= batch_size)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
        self._batches = iter(())

    def next_batch(self) -> list[Tensor]:
        batch = next(self._batches, None)
        if batch is None:
            self._batches = iter(self.loader)
            batch = next(self._batches)
        return batch

    def step(self, batch: list[Tensor]) -> float:
        expression_i, expression_j, coords_i, coords_j, target = (t.to(self.device) for t in batch)
        prediction = naive_forward(self.model, expression_i, expression_j, coords_i, coords_j)
        loss = F.mse_loss(prediction, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"naive trainer diverged: batch loss is {value}")
        self.optimizer.step()
        return value

    def train_batches(self, n_batches: int) -> float:
        """n_batches optimizer steps; returns the mean batch loss."""
        self.model.train()
        losses = [self.step(self.next_batch()) for _ in range(n_batches)]
        return sum(losses) / max(1, len(losses))
