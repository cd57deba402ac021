"""Torch networks for ``nn()`` terms and the fixed-part module that sums them.

Default network: the paper's MLP, hidden layers 100-50-25-12, ReLU, dropout
0.25 after each hidden layer, a linear output of c units. A user network is
passed by name in ``nets={"name": module_or_factory}``: an ``nn.Module`` that
maps (batch, d) to (batch, c), or a callable ``factory(d, c) -> nn.Module``.
A network that raises, or returns another shape, gives a NetworkError naming it,
when it is built and at any forward pass.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from gmenn_formula.errors import GmennError, NetworkError

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

    def label(self, index: int) -> str:
        """How messages name the network of the ``index``-th (0-based) ``nn()`` term."""
        return f"network {self.net!r}" if self.net is not None else f"default MLP of nn() term {index + 1}"


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
    if isinstance(entry, nn.Module):
        module = copy.deepcopy(entry)
    else:
        try:
            module = entry(inputs, outputs)
        except Exception as exc:
            raise NetworkError(
                f"The network factory nets[{spec.net!r}] raised {type(exc).__name__} when called as factory({inputs}, {outputs}) "
                f"(inputs, outputs): {exc}"
            ) from exc
    if not isinstance(module, nn.Module):
        raise NetworkError(f"nets[{spec.net!r}] must be a torch.nn.Module or a factory (inputs, outputs) -> Module; got {type(module).__name__}.")
    try:
        with torch.no_grad():
            out = module.eval()(torch.zeros(2, inputs))
    except Exception as exc:
        raise NetworkError(f"Network {spec.net!r} failed on a (2, {inputs}) input batch: {type(exc).__name__}: {exc}") from exc
    _check_shape(out, 2, inputs, outputs, f"network {spec.net!r}")
    return module


def _check_shape(out: object, rows: int, inputs: int, outputs: int, label: str) -> None:
    """NetworkError unless ``out`` is a (rows, outputs) tensor."""
    if isinstance(out, torch.Tensor) and tuple(out.shape) == (rows, outputs):
        return
    got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
    raise NetworkError(f"The {label} must map (batch, {inputs}) to (batch, {outputs}); on a batch of {rows} rows it returned {got}.")


class FixedPart(nn.Module):
    """eta_fixed = output_scale * sum_j net_j(X_j) + X_fixed @ beta + output_offset + offset, (batch, c).

    ``beta`` (k, c) are the linear fixed effects; with networks present the
    linear part has no intercept column (the networks' output bias plays it).
    ``output_offset`` and ``output_scale`` (c,) are fixed buffers, 0 and 1 unless the
    fit puts the networks on the response's scale (its level and, for gaussian, its
    spread), so that no network, the user's included, has to learn them from a start
    near 0 with outputs of order 1. ``labels`` name the networks in errors (default: by position).
    """

    def __init__(self, networks: list[nn.Module], num_fixed: int, outputs: int, labels: Sequence[str] | None = None) -> None:
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.beta = nn.Parameter(torch.zeros(num_fixed, outputs))
        self.register_buffer("output_offset", torch.zeros(outputs))
        self.register_buffer("output_scale", torch.ones(outputs))
        self.labels = tuple(labels) if labels is not None else tuple(f"network of nn() term {j + 1}" for j in range(len(networks)))

    def forward(self, X_networks: list[torch.Tensor], X_fixed: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        eta = X_fixed @ self.beta + offset[:, None] + self.output_offset
        outputs = [self._network(net, X, label, eta.shape[1]) for net, X, label in zip(self.networks, X_networks, self.labels)]
        return eta + self.output_scale * sum(outputs) if outputs else eta

    @staticmethod
    def _network(net: nn.Module, X: torch.Tensor, label: str, outputs: int) -> torch.Tensor:
        """``net(X)`` (b, outputs) for X (b, d); NetworkError naming ``label`` if it raises or has another shape."""
        try:
            out = net(X)
        except GmennError:
            raise
        except Exception as exc:
            raise NetworkError(f"The {label} raised {type(exc).__name__} on a batch of {X.shape[0]} rows: {exc}") from exc
        _check_shape(out, X.shape[0], X.shape[1], outputs, label)
        return out
