"""Torch networks for ``nn()`` terms and the fixed-part module that sums them.

Default network: the paper's MLP, hidden layers 100-50-25-12, ReLU, dropout
0.25 after each hidden layer, a linear output of c units. A user network is
passed by name in ``nets={"name": module_or_factory}``: an ``nn.Module`` that
maps (batch, d) to (batch, c), or a callable ``factory(d, c) -> nn.Module``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from gmenn_formula.errors import NetworkError

DEFAULT_HIDDEN = (100, 50, 25, 12)
DEFAULT_DROPOUT = 0.25
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU, "sigmoid": nn.Sigmoid}


class _TermOptions(Protocol):
    hidden: tuple[int, ...] | None
    dropout: float | None
    activation: str | None
    net: str | None


@dataclass(frozen=True)
class NetworkOptions:
    """Options of one ``nn()`` term (None: the default)."""

    hidden: tuple[int, ...] | None = None
    dropout: float | None = None
    activation: str | None = None
    net: str | None = None

    @classmethod
    def from_term(cls, term: _TermOptions) -> NetworkOptions:
        """The options of a formula's ``nn()`` term (any object with these four attributes,
        so this stage needs no import of the formula stage)."""
        return cls(term.hidden, term.dropout, term.activation, term.net)


def mlp(inputs: int, outputs: int, hidden: tuple[int, ...], dropout: float, activation: str) -> nn.Sequential:
    """(batch, inputs) -> (batch, outputs) multilayer perceptron."""
    layers: list[nn.Module] = []
    width = inputs
    for size in hidden:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


def build_network(spec: NetworkOptions, inputs: int, outputs: int, nets: Mapping[str, nn.Module | Callable] | None) -> nn.Module:
    """The torch module for one ``nn()`` term, checked on a dummy batch."""
    if spec.net is None:
        return mlp(
            inputs,
            outputs,
            spec.hidden if spec.hidden is not None else DEFAULT_HIDDEN,
            spec.dropout if spec.dropout is not None else DEFAULT_DROPOUT,
            spec.activation or "relu",
        )
    nets = nets or {}
    if spec.net not in nets:
        known = f" Known: {sorted(nets)}." if nets else ""
        raise NetworkError(f"nn(..., net={spec.net!r}) names no network; pass nets={{{spec.net!r}: module_or_factory}} to the fit.{known}")
    entry = nets[spec.net]
    # A module passed in is copied: the fit trains the copy and leaves the user's object untouched.
    module = copy.deepcopy(entry) if isinstance(entry, nn.Module) else entry(inputs, outputs)
    if not isinstance(module, nn.Module):
        raise NetworkError(f"nets[{spec.net!r}] must be a torch.nn.Module or a factory (inputs, outputs) -> Module; got {type(module).__name__}.")
    try:
        with torch.no_grad():
            out = module.eval()(torch.zeros(2, inputs))
    except Exception as exc:
        raise NetworkError(f"Network {spec.net!r} failed on a (2, {inputs}) input batch: {exc}") from exc
    if tuple(out.shape) != (2, outputs):
        raise NetworkError(f"Network {spec.net!r} must map (batch, {inputs}) to (batch, {outputs}); it returned shape {tuple(out.shape)}.")
    return module


class FixedPart(nn.Module):
    """eta_fixed = sum_j net_j(X_j) + X_fixed @ beta + offset, (batch, c).

    ``beta`` (k, c) are the linear fixed effects; with networks present the
    linear part has no intercept column (the networks' output bias plays it).
    """

    def __init__(self, networks: list[nn.Module], num_fixed: int, outputs: int) -> None:
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.beta = nn.Parameter(torch.zeros(num_fixed, outputs))

    def forward(self, X_networks: list[torch.Tensor], X_fixed: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        eta = X_fixed @ self.beta + offset[:, None]
        for net, X in zip(self.networks, X_networks):
            eta = eta + net(X)
        return eta
