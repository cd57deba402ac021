"""nn() options and user-supplied torch networks reach the engine; mistakes give clear errors."""

from __future__ import annotations

import pytest
import torch

import gmenn_formula as gf
from gmenn_formula.errors import ModelSpecificationError, NetworkError
from gmenn_formula.simulation import paper_scenario

TINY = dict(epochs=3, patience=2, final_epochs=3, average_epochs=2, max_average_epochs=2, verbose=0)


@pytest.fixture(scope="module")
def data():
    return paper_scenario(rows=600, features=3, levels=(20,), variances=(0.5,), family="gaussian", seed=4).data


def test_user_module_and_factory(data):
    module = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    before = [p.detach().clone() for p in module.parameters()]
    fit = gf.gmenn(
        "y ~ nn(x0 + x1, net='small') + nn(x2, net='linear') + (1 | g0)",
        data,
        nets={"small": module, "linear": lambda inputs, outputs: torch.nn.Linear(inputs, outputs)},
        **TINY,
    )
    first, second = fit.state.model.networks
    assert first is not module and isinstance(first, torch.nn.Sequential)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))
    assert isinstance(second, torch.nn.Linear) and second.in_features == 1
    assert fit.predict().shape == (600,)


def test_mlp_options_shape_the_network(data):
    fit = gf.gmenn("y ~ nn(x0 + x1 + x2, hidden=[7, 5], dropout=0, activation='tanh') + (1 | g0)", data, **TINY)
    (net,) = fit.state.model.networks
    widths = [layer.out_features for layer in net if isinstance(layer, torch.nn.Linear)]
    assert widths == [7, 5, 1]
    assert any(isinstance(layer, torch.nn.Tanh) for layer in net)
    assert not any(isinstance(layer, torch.nn.Dropout) for layer in net)


@pytest.mark.parametrize(
    ("nets", "phrase"),
    [
        (None, "pass nets={'mine': module_or_factory}"),
        ({"mine": torch.nn.Linear(5, 1)}, "failed on a (2, 2) input batch"),
        ({"mine": lambda i, o: torch.nn.Linear(i, 3)}, "must map (batch, 2) to (batch, 1)"),
        ({"mine": lambda i, o: "not a module"}, "must be a torch.nn.Module"),
    ],
)
def test_bad_user_networks(data, nets, phrase):
    with pytest.raises(NetworkError) as info:
        gf.gmenn("y ~ nn(x0 + x1, net='mine') + (1 | g0)", data, nets=nets, **TINY)
    assert phrase in str(info.value)


def test_formula_without_random_effects_is_refused(data):
    with pytest.raises(ModelSpecificationError, match=r"no random-effect term; add one such as \(1 \| group\)"):
        gf.gmenn("y ~ nn(x0 + x1)", data, **TINY)


def test_unknown_control_suggests_the_setting(data):
    with pytest.raises(gf.GmennError, match="Did you mean 'epochs'"):
        gf.gmenn("y ~ x0 + (1 | g0)", data, epoch=3)


def test_two_terms_on_one_factor_keep_separate_ranef_tables(data):
    fit = gf.gmenn("y ~ x0 + (1 | g0) + (0 + x1 | g0)", data, epochs=20, average_epochs=5, max_average_epochs=5, verbose=0)
    tables = fit.ranef()
    assert set(tables) == {"(1 | g0)", "(0 + x1 | g0)"}
    assert set(tables["(0 + x1 | g0)"]["term"]) == {"x1"}


def test_network_spec_from_term_reads_the_nn_options():
    from gmenn_formula.mstep.networks import NetworkOptions

    (term,) = gf.parse("y ~ nn(x0 + x1, hidden=[7, 5], dropout=0.5, activation='tanh', net='mine') + (1 | g0)").networks
    assert NetworkOptions.from_term(term) == NetworkOptions((7, 5), 0.5, "tanh", "mine")
    (default,) = gf.parse("y ~ nn(x0) + (1 | g0)").networks
    assert NetworkOptions.from_term(default) == NetworkOptions()
