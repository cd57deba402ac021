"""The paper's non-mixed-effects baselines on the same MLP (benchmark code, not the package).

Ignore (drop the grouping factors), one-hot encoding, target encoding and
learned entity embeddings, as compared in the MC-GMENN paper (section 3). All
four use the paper's MLP (``gmenn_formula.mstep.networks.mlp`` with
DEFAULT_HIDDEN 100-50-25-12, ReLU, DEFAULT_DROPOUT .25) and one training loop,
:func:`train_network`, with the settings of ``gmenn_formula.FitConfig()``'s
defaults: Adam at ``learning_rate``, minibatches of ``batch_size``, a random
``validation_fraction`` of the training rows held out, early stopping on the
validation loss with ``patience`` and the best weights restored, at most
``max_epochs(True)`` epochs. MC-GMENN trains with the same settings.

* **Ignore**: the MLP on the features alone.
* **One-hot**: a linear layer over ``[features, one-hot(g0), one-hot(g1), ...]``
  is the MLP's first layer; the one-hot part is computed as a column lookup
  into that layer's weight (an embedding sum), so 10,000 levels never build a
  rows-by-levels matrix. Same initialisation as ``nn.Linear`` over all
  columns. Levels unseen in training get a zero one-hot row.
* **Target encoding**: per factor and class, the level's mean of the
  one-hot target shrunk to the training prior with an empirical-Bayes weight
  ``n / (n + m)``, ``m = within-level variance / between-level variance``
  (method of moments, per factor and class). Training rows get out-of-fold
  encodings (5 folds, each fold encoded from the other four) so a row never
  sees its own target; test rows are encoded from all training rows; unseen
  levels get the prior. The encodings join the features as MLP inputs.
* **Embedding**: one ``nn.Embedding(levels + 1, dim)`` per factor with
  ``dim = min(50, ceil(levels / 2))`` (the fast.ai/Guo-Berkhahn rule of thumb),
  concatenated with the features; the extra row (zeros, trained only if
  something maps to it) stands for levels unseen in training.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

import gmenn_formula as gf
from gmenn_formula.mstep.networks import DEFAULT_DROPOUT, DEFAULT_HIDDEN, mlp
from gmenn_formula.training.config import TrainingSettings

METHODS = ("Ignore", "One-hot", "Target enc.", "Embedding")
TE_FOLDS = 5
PREDICT_CHUNK = 65_536


@dataclass(frozen=True)
class Tabular:
    """Network inputs: features X (n, d) float32, level codes (n, L) int64 (-1: unseen in training), y (n,)."""

    X: np.ndarray
    codes: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Split:
    train: Tabular
    test: Tabular
    num_levels: tuple[int, ...]
    num_outputs: int  # 1 for binary (a logit), C for C classes (softmax)


def make_split(train: pd.DataFrame, test: pd.DataFrame, features: list[str], factors: list[str], response: str, classes: int) -> Split:
    """Level codes from the training rows only; test levels unseen in training get -1."""
    train_codes, test_codes, num_levels = [], [], []
    for factor in factors:
        codes, levels = pd.factorize(train[factor])
        train_codes.append(codes)
        test_codes.append(pd.Index(levels).get_indexer(test[factor]))
        num_levels.append(len(levels))

    def tabular(frame: pd.DataFrame, codes: list[np.ndarray]) -> Tabular:
        return Tabular(
            frame[features].to_numpy(np.float32),
            np.stack(codes, axis=1).astype(np.int64) if codes else np.zeros((len(frame), 0), np.int64),
            frame[response].to_numpy(np.int64),
        )

    return Split(tabular(train, train_codes), tabular(test, test_codes), tuple(num_levels), 1 if classes == 2 else classes)


# -- networks -------------------------------------------------------------------------------------------------


def paper_mlp(inputs: int, outputs: int) -> nn.Sequential:
    return mlp(inputs, outputs, DEFAULT_HIDDEN, DEFAULT_DROPOUT, "relu")


class IgnoreNet(nn.Module):
    def __init__(self, features: int, outputs: int) -> None:
        super().__init__()
        self.net = paper_mlp(features, outputs)

    def forward(self, X: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.net(X)


class OneHotNet(nn.Module):
    """The MLP over ``[X, one-hot(codes)]`` without the one-hot matrix: the first layer's weight
    columns of the one-hot block are looked up by level and summed in."""

    def __init__(self, features: int, num_levels: tuple[int, ...], outputs: int) -> None:
        super().__init__()
        self.net = paper_mlp(features + sum(num_levels), outputs)
        self.features = features
        self.register_buffer("offsets", torch.as_tensor(np.cumsum((0, *num_levels[:-1])), dtype=torch.long))

    def forward(self, X: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        first, rest = self.net[0], self.net[1:]
        weight = first.weight  # (hidden, features + sum levels)
        h = X @ weight[:, : self.features].T + first.bias
        block = weight[:, self.features :].T  # (sum levels, hidden)
        seen = codes >= 0
        index = torch.where(seen, codes + self.offsets, 0)
        h = h + (block[index] * seen.unsqueeze(-1)).sum(1)
        return rest(h)


class EmbeddingNet(nn.Module):
    """One embedding per factor (``min(50, ceil(levels / 2))`` wide) concatenated with X."""

    def __init__(self, features: int, num_levels: tuple[int, ...], outputs: int) -> None:
        super().__init__()
        dims = [min(50, math.ceil(q / 2)) for q in num_levels]
        self.embeddings = nn.ModuleList(nn.Embedding(q + 1, dim) for q, dim in zip(num_levels, dims))
        for q, embedding in zip(num_levels, self.embeddings):
            with torch.no_grad():
                embedding.weight[q].zero_()  # the "unseen level" row
        self.unseen = list(num_levels)
        self.net = paper_mlp(features + sum(dims), outputs)

    def forward(self, X: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        parts = [X]
        for j, (embedding, unseen) in enumerate(zip(self.embeddings, self.unseen)):
            parts.append(embedding(torch.where(codes[:, j] >= 0, codes[:, j], unseen)))
        return self.net(torch.cat(parts, dim=1))


# -- target encoding -------------------------------------------------------------------------------------------


def _encode_from(codes: np.ndarray, targets: np.ndarray, num_levels: int, prior: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Shrunk level means of ``targets`` (n, k) for the levels ``query`` (-1: prior)."""
    counts = np.bincount(codes, minlength=num_levels).astype(float)
    sums = np.stack([np.bincount(codes, weights=targets[:, k], minlength=num_levels) for k in range(targets.shape[1])], axis=1)
    seen = counts > 0
    means = np.where(seen[:, None], sums / np.maximum(counts, 1)[:, None], prior)
    within = prior * (1 - prior)  # Bernoulli variance of each class indicator
    if seen.sum() > 1:
        between = np.average((means[seen] - prior) ** 2, axis=0, weights=counts[seen]) - within * seen.sum() / counts[seen].sum()
    else:
        between = np.zeros_like(prior)
    m = within / np.maximum(between, 1e-6)  # prior strength in rows; large when levels barely differ
    weight = counts[:, None] / (counts[:, None] + m[None, :])
    encoded = weight * means + (1 - weight) * prior
    return np.where((query >= 0)[:, None], encoded[np.maximum(query, 0)], prior)


def target_encode(split: Split, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) target encodings, (n, L * k) with k = 1 (binary) or C; training rows out of fold."""
    y = split.train.y
    k = split.num_outputs
    targets = y[:, None].astype(float) if k == 1 else np.eye(k)[y]
    prior = targets.mean(0)
    folds = np.random.default_rng(seed).integers(TE_FOLDS, size=len(y))
    train_parts, test_parts = [], []
    for j, q in enumerate(split.num_levels):
        codes = split.train.codes[:, j]
        out_of_fold = np.empty((len(y), k))
        for fold in range(TE_FOLDS):
            held = folds == fold
            out_of_fold[held] = _encode_from(codes[~held], targets[~held], q, prior, codes[held])
        train_parts.append(out_of_fold)
        test_parts.append(_encode_from(codes, targets, q, prior, split.test.codes[:, j]))
    return np.concatenate(train_parts, axis=1).astype(np.float32), np.concatenate(test_parts, axis=1).astype(np.float32)


# -- the shared training loop ----------------------------------------------------------------------------------


def _loss(eta: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    if eta.shape[1] == 1:
        return nn.functional.binary_cross_entropy_with_logits(eta[:, 0], y.float(), reduction=reduction)
    return nn.functional.cross_entropy(eta, y, reduction=reduction)


def _evaluate(model: nn.Module, X: torch.Tensor, codes: torch.Tensor, y: torch.Tensor | None = None):
    """Mean loss on (X, codes, y) or, without y, the (n, k) output; eval mode, in chunks."""
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(X), PREDICT_CHUNK):
            outputs.append(model(X[start : start + PREDICT_CHUNK], codes[start : start + PREDICT_CHUNK]))
    eta = torch.cat(outputs)
    return float(_loss(eta, y)) if y is not None else eta


@dataclass(frozen=True)
class Trained:
    model: nn.Module
    epochs: int
    best_epoch: int
    seconds: float


def train_network(model: nn.Module, data: Tabular, config: TrainingSettings, seed: int) -> Trained:
    """Minibatch Adam with early stopping on a validation split, best weights restored (FitConfig's settings)."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.y))
    num_validation = max(1, round(config.validation_fraction * len(order)))
    val, fit = np.sort(order[:num_validation]), np.sort(order[num_validation:])
    X, codes, y = (torch.tensor(a) for a in (data.X, data.codes, data.y))
    X_fit, codes_fit, y_fit = X[fit], codes[fit], y[fit]
    X_val, codes_val, y_val = X[val], codes[val], y[val]
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    best_loss, best_state, best_epoch, waited, epoch = np.inf, None, 0, 0, 0
    for epoch in range(1, config.max_epochs(True) + 1):
        model.train()
        for batch in torch.randperm(len(fit), generator=generator).split(config.batch_size):
            optimizer.zero_grad()
            _loss(model(X_fit[batch], codes_fit[batch]), y_fit[batch]).backward()
            optimizer.step()
        val_loss = _evaluate(model, X_val, codes_val, y_val)
        if val_loss < best_loss:
            best_loss, best_state, best_epoch, waited = val_loss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            waited += 1
            if waited >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return Trained(model, epoch, best_epoch, time.perf_counter() - started)


def probabilities(model: nn.Module, data: Tabular) -> np.ndarray:
    """(n, C) class probabilities (binary: (n, 2))."""
    eta = _evaluate(model, torch.tensor(data.X), torch.tensor(data.codes)).double()
    if eta.shape[1] == 1:
        p = torch.sigmoid(eta[:, 0])
        return torch.stack([1 - p, p], dim=1).numpy()
    return torch.softmax(eta, dim=1).numpy()


def fit_baseline(method: str, split: Split, config: TrainingSettings, seed: int) -> dict:
    """Train one baseline; returns test probabilities (n_test, C), seconds (encoding included), epochs."""
    started = time.perf_counter()
    torch.manual_seed(seed)  # the initial weights, independent of whatever ran before
    features, k = split.train.X.shape[1], split.num_outputs
    train, test = split.train, split.test
    if method == "Ignore":
        model: nn.Module = IgnoreNet(features, k)
    elif method == "One-hot":
        model = OneHotNet(features, split.num_levels, k)
    elif method == "Embedding":
        model = EmbeddingNet(features, split.num_levels, k)
    elif method == "Target enc.":
        train_te, test_te = target_encode(split, seed)
        train = Tabular(np.concatenate([train.X, train_te], axis=1), train.codes, train.y)
        test = Tabular(np.concatenate([test.X, test_te], axis=1), test.codes, test.y)
        model = IgnoreNet(train.X.shape[1], k)
    else:
        raise ValueError(f"unknown baseline {method!r}; choose from {METHODS}")
    trained = train_network(model, train, config, seed)
    return {
        "probabilities": probabilities(trained.model, test),
        "seconds": time.perf_counter() - started,
        "epochs": trained.epochs,
        "best_epoch": trained.best_epoch,
    }
