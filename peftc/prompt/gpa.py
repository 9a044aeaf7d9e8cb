"""Gaussian prompt aggregation (GPA, methods spec §1.5): a Gaussian-weighted average of per-epoch prompts.

``w_e = N(e; mu, sigma^2) / sum_{e'=1..E} N(e'; mu, sigma^2)`` for epochs e = 1..E. The running sum
``Theta += w_e theta_e`` is taken at the end of every epoch; training continues from the raw
prompts, and only after the last epoch is Theta loaded into the model. Only prompt tensors are
aggregated (the frozen encoder is not).
"""
from __future__ import annotations

import numpy as np

from ..nn.module import Parameter


def gaussian_epoch_weights(num_epochs: int, mean: float, std: float) -> np.ndarray:
    """(E,) float64 weights of epochs 1..E: the normal density at each index, normalised to sum 1."""
    if num_epochs < 1 or not std > 0:
        raise ValueError(f"need num_epochs >= 1 and std > 0, got {num_epochs}, {std}")
    e = np.arange(1, num_epochs + 1, dtype=np.float64)
    dens = np.exp(-0.5 * ((e - mean) / std) ** 2) / (std * np.sqrt(2.0 * np.pi))
    total = dens.sum()
    if not total > 0:  # every epoch dozens of sigmas from the mean: the density underflows
        raise ValueError(f"Gaussian({mean}, {std}) puts no representable mass on epochs 1..{num_epochs}")
    return dens / total


class GaussianPromptAggregator:
    """Accumulates ``sum_e w_e theta_e`` for a list of prompt Parameters; :meth:`load` writes it in."""

    def __init__(self, params: list[Parameter], num_epochs: int, mean: float, std: float) -> None:
        self.params = list(params)
        self.weights = gaussian_epoch_weights(num_epochs, mean, std)
        self.sums = [np.zeros(p.shape, dtype=np.float64) for p in self.params]
        self.epochs_seen = 0

    def update(self) -> None:
        """Call once at the end of each epoch (epoch number = calls so far + 1)."""
        if self.epochs_seen >= len(self.weights):
            raise RuntimeError(f"GPA was set up for {len(self.weights)} epochs and has seen them all")
        w = self.weights[self.epochs_seen]
        for s, p in zip(self.sums, self.params):
            s += w * p.data
        self.epochs_seen += 1

    def load(self) -> None:
        """Write the aggregate into the parameters (after the last epoch)."""
        if self.epochs_seen != len(self.weights):
            raise RuntimeError(f"GPA has seen {self.epochs_seen} of {len(self.weights)} epochs")
        for s, p in zip(self.sums, self.params):
            p.data[...] = s
