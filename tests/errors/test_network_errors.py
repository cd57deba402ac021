"""User networks that fail: a NetworkError naming the network and chaining the original
exception, or naming the expected output shape, at the first forward pass and before training."""

from __future__ import annotations

import pytest
import torch
from support.sleepstudy_like import sleepstudy_like

import gmenn_formula as gf
import gmenn_formula.training.guard
from gmenn_formula.errors import GmennError, NetworkError

FORMULA = "Reaction ~ nn(Days, net='mine') + (1 | Subject)"
TINY = dict(epochs=2, patience=2, final_epochs=2, average_epochs=2, max_average_epochs=2, verbose=0)


@pytest.fixture(scope="module")
def data():
    return sleepstudy_like()


@pytest.fixture
def no_training(monkeypatch):
    """A training epoch fails the test: these errors come at the first forward pass."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network trained before its error was found")

    monkeypatch.setattr(gmenn_formula.training.guard, "train_epoch", refuse)


class FailsOnData(torch.nn.Module):
    """Passes the (2, d) zeros check at build time, raises on any real batch."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(inputs, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x != 0).any()):
            raise ValueError("cannot handle nonzero days")
        return self.linear(x)


class WideOnData(FailsOnData):
    """(batch, 1) on the zeros check, (batch, 2) on real batches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out if x.shape[0] == 2 else torch.cat([out, out], dim=1)


def factory_that_raises(inputs: int, outputs: int) -> torch.nn.Module:
    raise RuntimeError("no GPU kernels for this layer")


def test_factory_that_raises_names_the_net_and_chains_the_error(data, no_training):
    with pytest.raises(NetworkError) as info:
        gf.gmenn(FORMULA, data, nets={"mine": factory_that_raises}, **TINY)
    message = str(info.value)
    assert "nets['mine']" in message and "RuntimeError" in message and "no GPU kernels for this layer" in message
    assert "factory(1, 1)" in message
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("net", [FailsOnData(1, 1), lambda inputs, outputs: FailsOnData(inputs, outputs)], ids=["module", "factory"])
def test_forward_that_raises_on_real_batches_names_the_net_and_chains_the_error(data, no_training, net):
    with pytest.raises(NetworkError) as info:
        gf.gmenn(FORMULA, data, nets={"mine": net}, **TINY)
    message = str(info.value)
    assert "network 'mine'" in message and "ValueError" in message and "cannot handle nonzero days" in message
    assert "batch of 180 rows" in message
    assert isinstance(info.value.__cause__, ValueError) and isinstance(info.value, GmennError)


@pytest.mark.parametrize(
    ("net", "fragment"),
    [
        (lambda i, o: torch.nn.Linear(i, 3), "on a batch of 2 rows it returned shape (2, 3)"),
        (lambda i, o: torch.nn.Sequential(torch.nn.Linear(i, 1), torch.nn.Flatten(0)), "on a batch of 2 rows it returned shape (2,)"),
        (lambda i, o: WideOnData(i, o), "on a batch of 180 rows it returned shape (180, 2)"),
    ],
    ids=["too-wide", "flat", "wide-on-data"],
)
def test_wrong_output_shape_names_the_expected_shape(data, no_training, net, fragment):
    with pytest.raises(NetworkError) as info:
        gf.gmenn(FORMULA, data, nets={"mine": net}, **TINY)
    assert "The network 'mine' must map (batch, 1) to (batch, 1)" in str(info.value)
    assert fragment in str(info.value)


class ReturnsTuple(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


def test_output_that_is_not_a_tensor_is_named(data, no_training):
    with pytest.raises(NetworkError, match=r"must map \(batch, 1\) to \(batch, 1\); on a batch of 2 rows it returned a tuple"):
        gf.gmenn(FORMULA, data, nets={"mine": ReturnsTuple()}, **TINY)


def test_default_mlp_errors_name_the_term():
    from gmenn_formula.mstep.networks import FixedPart, mlp

    model = FixedPart([mlp(2, 1, (4,), 0.0, "relu")], 0, 1)
    with pytest.raises(NetworkError, match=r"The network of nn\(\) term 1 raised RuntimeError on a batch of 3 rows"):
        model([torch.zeros(3, 5)], torch.zeros(3, 0), torch.zeros(3))
