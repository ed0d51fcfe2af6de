"""The module lowrank.svd puts in place of an nn.Linear (its own file: registering the plugin must not import
torch, so that a llama.cpp measuring process never loads it)."""

from __future__ import annotations

import torch


class LowRankLinear(torch.nn.Module):
    """y = up(down(x)): a rank-r stand-in for an nn.Linear."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = torch.nn.Linear(in_features, rank, bias=False)
        self.up = torch.nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))
