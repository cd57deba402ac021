"""A :class:`~gmenn_formula.design.DesignSpec` as plain JSON, and back, without pickle.

What is written (all JSON values):
- the formula as canonical text (``parse(str(f)) == f``), the family, the
  resolved ``nn()`` inputs (``nn(.)`` expanded), the response encoding
  (name, class labels);
- each grouping factor's columns and its levels (values and pandas dtype);
- each parametric block (fixed part, offsets, ``nn()`` inputs, random slopes):
  its formulae text, column names, and the state formulae learned on the
  training data: per component its kind, categorical levels and whether the
  encoding spans the intercept, and the parameters of every stateful
  transform in its call tree (``center()``, ``scale()``/``standardize()``,
  ``poly()``, ``bs()``).

A block is rebuilt by evaluating its formula on a small synthetic frame (one
column per variable: the saved levels for categorical ones, numbers otherwise)
and then overwriting every learned piece of state with the saved one;
stateless functions (``np.log``, ``I()``, ``C()``'s contrasts ...) come from
the formula text. Transforms whose state holds objects other than numbers,
arrays and containers of them (formulae's ``cr()``, ``cc()`` and ``tp()``
splines keep scipy objects) raise :class:`UnsupportedSaveError`, and so does
any block whose rebuild does not reproduce the original columns on the probe
frame (see :func:`check_rebuilt`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from formulae.categorical import CategoricalBox
from formulae.terms.call import Call
from formulae.terms.call_resolver import LazyCall, LazyOperator

from gmenn_formula.design.columns import ParametricBlock, block_formula, build_matrix, component_variables, variables
from gmenn_formula.design.grouping import GroupingFactor
from gmenn_formula.design.response import ResponseCoder
from gmenn_formula.design.spec import DesignSpec, NetworkSpec, RandomSpec, block_exprs, is_column_term
from gmenn_formula.errors import ModelFileError, UnsupportedSaveError
from gmenn_formula.families import FAMILIES, get_family
from gmenn_formula.formula import parse

PROBE_ROWS = 8
"""Least number of rows of the synthetic frame a block is rebuilt on."""

_ARRAY_KINDS = "biuf"


# -- values ---------------------------------------------------------------------------
TRANSFORM_ADVICE = "Use a supported stateful transform (center, scale, standardize, poly, bs) or compute the column before fitting."
COLUMN_ADVICE = "Convert the column to strings or numbers before fitting."


def encode_value(value: object, what: str, advice: str = COLUMN_ADVICE) -> object:
    """A JSON value for numbers, strings, numeric arrays and lists/tuples/dicts of them.

    Arrays, tuples and dicts are tagged (``__ndarray__``, ``__tuple__``,
    ``__dict__``) so that :func:`decode_value` restores their type. Anything
    else raises UnsupportedSaveError naming ``what`` and giving ``advice``.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return encode_value(value.item(), what, advice)
    if isinstance(value, np.ndarray) and value.dtype.kind in _ARRAY_KINDS:
        return {"__ndarray__": value.ravel().tolist(), "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, list):
        return [encode_value(v, what, advice) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [encode_value(v, what, advice) for v in value]}
    if isinstance(value, dict):
        return {"__dict__": [[encode_value(k, what, advice), encode_value(v, what, advice)] for k, v in value.items()]}
    raise UnsupportedSaveError(f"{what} holds a value of type {type(value).__name__}, which a model file cannot store. {advice}")


def decode_value(value: object) -> object:
    """Inverse of :func:`encode_value`; raises ValueError on a malformed tag."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        dtype = np.dtype(value["dtype"])
        if dtype.kind not in _ARRAY_KINDS:
            raise ValueError(f"array of dtype {dtype} in a model file")
        return np.array(value["__ndarray__"], dtype=dtype).reshape(value["shape"])
    if "__tuple__" in value:
        return tuple(decode_value(v) for v in value["__tuple__"])
    if "__dict__" in value:
        return {decode_value(k): decode_value(v) for k, v in value["__dict__"]}
    raise ValueError(f"unknown tagged value with keys {sorted(value)}")


def _index_to_json(index: pd.Index, what: str) -> dict:
    if isinstance(index, pd.MultiIndex):
        parts = [_index_to_json(index.get_level_values(i), what) for i in range(index.nlevels)]
        return {"parts": parts, "names": list(index.names)}
    return {"values": [encode_value(v, what) for v in index.tolist()], "dtype": str(index.dtype)}


def _index_from_json(data: dict) -> pd.Index:
    if "parts" in data:
        return pd.MultiIndex.from_arrays([_index_from_json(part) for part in data["parts"]], names=data["names"])
    return pd.Index([decode_value(v) for v in data["values"]], dtype=data["dtype"])


# -- formulae blocks ------------------------------------------------------------------
def _lazy_calls(node: object) -> Iterator[LazyCall]:
    """Every function call in a formulae call tree, depth first."""
    if isinstance(node, LazyCall):
        yield node
        for arg in [*node.args, *node.kwargs.values()]:
            yield from _lazy_calls(arg)
    elif isinstance(node, LazyOperator):
        for arg in node.args:
            yield from _lazy_calls(arg)


def _components(matrix) -> Iterator[tuple[str, object]]:
    """(term name, component) of every Variable/Call of a formulae CommonEffectsMatrix."""
    for name, term in matrix.terms.items():
        for component in getattr(term, "components", ()):  # the intercept has none
            yield name, component


def _transform_name(transform: object) -> str:
    return getattr(type(transform), "__transform_name__", type(transform).__name__)


def _component_to_json(term: str, component, role: str) -> dict:
    location = f"term {term!r} of the {role}"
    what = f"The {location}"
    if component.kind not in ("numeric", "categoric"):
        raise UnsupportedSaveError(f"{what} is of kind {component.kind!r}; a model file can store numeric and categorical columns only.")
    transforms = []
    if isinstance(component, Call):
        for call in _lazy_calls(component.call):
            transform = call.stateful_transform
            if transform is None:
                transforms.append(None)
                continue
            name = _transform_name(transform)
            state = encode_value(dict(vars(transform)), f"The {name}() in the {location}", TRANSFORM_ADVICE)
            transforms.append({"name": name, "state": state})
    return {
        "kind": component.kind,
        "levels": encode_value(component.levels, what),
        "spans_intercept": component.spans_intercept,
        "transforms": transforms,
    }


def _synthetic_columns(matrix, formula: str) -> dict[str, list | None]:
    """Per variable read by a block: the training levels when it feeds a categorical component, else None."""
    columns: dict[str, list | None] = {name: None for name in sorted(variables(formula))}
    for _, component in _components(matrix):
        names = component_variables(component)
        if component.kind == "categoric" and len(names) == 1:
            (name,) = names
            if columns.get(name) is None:
                columns[name] = list(component.levels)
    return columns


def _block_to_json(block: ParametricBlock, role: str) -> dict:
    if block._matrix is None:
        return {"formula": block.formula, "names": [], "columns": None, "components": None}
    columns = _synthetic_columns(block._matrix, block.formula)
    return {
        "formula": block.formula,
        "names": list(block.names),
        "columns": {name: encode_value(levels, f"Column {name!r} of the {role}") for name, levels in columns.items()},
        "components": [_component_to_json(term, component, role) for term, component in _components(block._matrix)],
    }


def _synthetic_frame(columns: dict[str, list | None]) -> pd.DataFrame:
    """A small frame on which a block evaluates: categorical columns cycle their levels, numeric ones are 1..2."""
    rows = max([PROBE_ROWS, *(len(levels) for levels in columns.values() if levels)])
    frame = pd.DataFrame(index=pd.RangeIndex(rows))
    for name, levels in columns.items():
        frame[name] = pd.Series([levels[i % len(levels)] for i in range(rows)]) if levels else np.linspace(1.0, 2.0, rows)
    return frame


def _restore_component(component, saved: dict) -> None:
    """Overwrite the state formulae learned on the synthetic frame with the saved state."""
    if component.kind != saved["kind"]:
        raise ModelFileError(f"component {component.name} is {component.kind}, saved as {saved['kind']}")
    if saved["kind"] == "categoric":
        levels = decode_value(saved["levels"])
        box = component._intermediate_data if isinstance(component, Call) else None
        if isinstance(box, CategoricalBox):  # C(x, contrast): keep the contrast the formula text gave
            component.eval_categorical_box(CategoricalBox(pd.Series(levels), box.contrast, levels), saved["spans_intercept"])
        else:
            component.eval_categoric(pd.Categorical(levels, categories=levels, ordered=True), saved["spans_intercept"])
    calls = list(_lazy_calls(component.call)) if isinstance(component, Call) else []
    if len(calls) != len(saved["transforms"]):
        raise ModelFileError(f"component {component.name} has {len(calls)} calls, saved with {len(saved['transforms'])}")
    for call, transform in zip(calls, saved["transforms"]):
        if transform is None:
            continue
        if call.stateful_transform is None or _transform_name(call.stateful_transform) != transform["name"]:
            raise ModelFileError(f"call {call.callee} is not the saved transform {transform['name']}")
        state = decode_value(transform["state"])
        fresh = vars(call.stateful_transform)
        if not isinstance(state, dict) or set(state) != set(fresh):
            raise ModelFileError(f"the saved state of {call.callee}() does not have the fields {sorted(fresh)}")
        fresh.update(state)


def _block_from_json(data: dict, exprs: tuple[str, ...], intercept: bool, role: str) -> ParametricBlock:
    """Rebuild one block whose formula the parsed model formula dictates (checked before anything is evaluated)."""
    formula = block_formula(exprs, intercept)
    if data["formula"] != formula:
        raise ModelFileError(f"the {role} is saved as {data['formula']!r}, but the model formula makes it {formula!r}")
    names = tuple(data["names"])
    if not all(isinstance(name, str) for name in names):
        raise ModelFileError(f"the {role}'s column names must be text, not {data['names']!r}")
    if data["components"] is None:
        if names or (exprs or intercept):
            raise ModelFileError(f"the {role} ({formula!r}) is saved without its columns")
        return ParametricBlock(formula, names, None)
    columns = {name: decode_value(levels) for name, levels in data["columns"].items()}
    if set(columns) != variables(formula):
        raise ModelFileError(f"the {role} ({formula!r}) is saved with the columns {sorted(columns)}, not {sorted(variables(formula))}")
    frame = _synthetic_frame(columns)
    matrix = build_matrix(formula, frame)
    components = [component for _, component in _components(matrix)]
    if len(components) != len(data["components"]):
        raise ModelFileError(f"the {role} ({formula!r}) has {len(components)} components, saved with {len(data['components'])}")
    for component, saved in zip(components, data["components"]):
        _restore_component(component, saved)
    block = ParametricBlock(formula, names, matrix)
    width = block.apply(frame, "saved block").shape[1]
    if width != len(names):
        raise ModelFileError(f"the {role} ({formula!r}) rebuilds {width} columns, saved with {len(names)}")
    return block


def _block_roles(formula) -> list[str]:
    """The role of every parametric block, in :func:`block_exprs`'s order."""
    roles = ["fixed part"]
    roles += [f"offset #{i}" for i in range(1, len(formula.offsets) + 1)]
    roles += [f"nn() #{i} inputs" for i in range(1, len(formula.networks) + 1)]
    roles += [f"slopes of {term}" for term in formula.random]
    return roles


def _blocks(spec: DesignSpec) -> list[tuple[str, ParametricBlock]]:
    """Every parametric block of a spec with its role, in a fixed order."""
    return list(zip(_block_roles(spec.formula), spec._blocks()))


# -- the spec -------------------------------------------------------------------------
def spec_to_json(spec: DesignSpec) -> dict:
    """The spec as a JSON-ready dict; raises UnsupportedSaveError for what cannot be stored."""
    response = spec.response
    return {
        "formula": str(spec.formula),
        "family": spec.family.name,
        "response": {"family": response.family, "name": response.name, "classes": encode_value(response.classes, "The response classes")},
        "network_inputs": [list(net.inputs) for net in spec.networks],
        "grouping": [
            {"columns": list(part.factor.columns), "levels": _index_to_json(part.factor.levels, f"Grouping factor {part.factor.name!r}")}
            for part in spec.random
        ],
        "blocks": [_block_to_json(block, role) for role, block in _blocks(spec)],
    }


def spec_from_json(data: dict) -> DesignSpec:
    """Rebuild a DesignSpec written by :func:`spec_to_json`.

    A model file is data: the formula is parsed (so it calls only the functions of
    :mod:`gmenn_formula.formula.functions`), and every saved block must be the block that
    formula makes, before formulae evaluates anything. Raises ModelFileError for a file
    that does not hold together (ValueError/KeyError/TypeError for a malformed one).
    """
    formula = parse(data["formula"])
    family = data["family"]
    if family not in FAMILIES:
        raise ModelFileError(f"unknown family {family!r}; a model file holds one of {', '.join(FAMILIES)}")
    response = data["response"]
    if response["family"] != family or response["name"] != str(formula.response):
        raise ModelFileError(f"the response is saved as {response['name']!r} ({response['family']}), not {str(formula.response)!r} ({family})")
    classes = decode_value(response["classes"])
    _check_classes(family, classes)
    network_inputs = _network_inputs(formula, data["network_inputs"])
    exprs = block_exprs(formula, network_inputs)
    roles = _block_roles(formula)
    if len(data["blocks"]) != len(exprs) or len(data["grouping"]) != len(formula.random):
        raise ModelFileError("the saved blocks do not match the formula's terms")
    for grouping, term in zip(data["grouping"], formula.random):
        if tuple(grouping["columns"]) != term.group:
            raise ModelFileError(f"the grouping factor of {term} is saved as {grouping['columns']}")
    blocks = [_block_from_json(block, *pair, role) for block, pair, role in zip(data["blocks"], exprs, roles)]
    num_offsets, num_networks = len(formula.offsets), len(formula.networks)
    offsets = tuple(blocks[1 : 1 + num_offsets])
    networks = tuple(blocks[1 + num_offsets : 1 + num_offsets + num_networks])
    slopes = blocks[1 + num_offsets + num_networks :]
    random = tuple(
        RandomSpec(term, GroupingFactor(tuple(grouping["columns"]), _index_from_json(grouping["levels"])), block)
        for term, grouping, block in zip(formula.random, data["grouping"], slopes)
    )
    return DesignSpec(
        formula=formula,
        family=get_family(family),
        response=ResponseCoder(family, response["name"], classes),
        fixed=blocks[0],
        offsets=offsets,
        networks=tuple(NetworkSpec(term, inputs, block) for term, inputs, block in zip(formula.networks, network_inputs, networks)),
        random=random,
    )


def _check_classes(family: str, classes: object) -> None:
    """Class labels as the response coder keeps them: two or more distinct scalars (two for binomial), or None."""
    if classes is None and family != "categorical":
        return
    ok = isinstance(classes, tuple) and all(isinstance(c, (str, int, float, bool)) for c in classes) and len(set(classes)) == len(classes)
    if not ok or (family == "categorical" and len(classes) < 2) or (family == "binomial" and len(classes) != 2) or family in ("gaussian", "poisson"):
        raise ModelFileError(f"the response classes {classes!r} do not suit the {family} family")


def _network_inputs(formula, saved: list) -> tuple[tuple[str, ...], ...]:
    """The saved inputs of every nn() term: the formula's own, after the leftover columns for ``nn(.)``."""
    if not isinstance(saved, list) or len(saved) != len(formula.networks):
        raise ModelFileError("the saved nn() inputs do not match the formula's nn() terms")
    result = []
    for term, inputs in zip(formula.networks, saved):
        inputs = tuple(inputs)
        own = inputs[len(inputs) - len(term.inputs) :] if term.inputs else ()
        rest = inputs[: len(inputs) - len(term.inputs)]
        if own != term.inputs or (rest and not term.rest) or not all(isinstance(e, str) and is_column_term(e) for e in rest):
            raise ModelFileError(f"the saved inputs {list(inputs)} are not those of {term}")
        result.append(inputs)
    return tuple(result)


def check_rebuilt(original: DesignSpec, rebuilt: DesignSpec) -> None:
    """Raise UnsupportedSaveError unless ``rebuilt`` encodes data exactly as ``original``.

    Grouping levels must be equal with the same dtype; every parametric block
    must give the same columns on the synthetic probe frame of its variables.
    """
    for before, after in zip(original.random, rebuilt.random):
        levels, restored = before.factor.levels, after.factor.levels
        if not (levels.equals(restored) and all(a.dtype == b.dtype for a, b in zip(_level_arrays(levels), _level_arrays(restored)))):
            raise UnsupportedSaveError(
                f"The levels of grouping factor {before.factor.name!r} (dtype {levels.dtype}) do not survive a model file. {COLUMN_ADVICE}"
            )
    for (role, before), (_, after) in zip(_blocks(original), _blocks(rebuilt)):
        if before._matrix is None:
            continue
        probe = _synthetic_frame(_synthetic_columns(before._matrix, before.formula))
        expected, restored = before.apply(probe, role), after.apply(probe, role)
        if expected.shape != restored.shape or not np.allclose(expected, restored, rtol=1e-12, atol=0.0, equal_nan=True):
            raise UnsupportedSaveError(f"The {role} ({before.formula!r}) does not survive a model file. {TRANSFORM_ADVICE}")


def _level_arrays(index: pd.Index) -> list[pd.Index]:
    if isinstance(index, pd.MultiIndex):
        return [index.get_level_values(i) for i in range(index.nlevels)]
    return [index]
