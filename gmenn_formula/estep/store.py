"""The E-step's exported functions on disk, so that a new process skips PyMC and tracing.

An entry is one ``jax.export`` serialization (StableHLO and its argument layout; no Python code,
nothing evaluated on load) of a function traced from the PyMC model of one structure. Its file
name is a digest of everything the traced function depends on: what the caller names (function,
family, shapes, dtypes, sampler settings), the platform, the versions of JAX, jaxlib, PyMC,
PyTensor and blackjax, and the source of ``gmenn_formula/estep`` and ``gmenn_formula/families``;
so an entry is only ever read back by the code that would trace the same function, and a changed
package or library writes new entries beside the old ones. The directory is
``gmenn_formula/exported`` under ``$XDG_CACHE_HOME`` (default ``~/.cache``); entries are tens of
kilobytes, and deleting the directory only costs the next fit of each structure its tracing.

Reading an unreadable entry, or failing to write one (a read-only cache, a serialization error),
is not an error: the caller traces the function as if the entry were missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import jax
from jax import export

from gmenn_formula.estep.arrays import DrawInfo
from gmenn_formula.estep.inputs import ModelData, ModelParams
from gmenn_formula.estep.precondition import BlockWhitening, RankOneWhitening
from gmenn_formula.estep.sampler import SamplerState

LIBRARIES = ("jax", "jaxlib", "pymc", "pytensor", "blackjax")
"""Libraries whose versions enter every key (they shape the traced function)."""
SOURCES = ("estep", "families")
"""Folders of the package whose source enters every key."""
SUFFIX = ".jaxexport"

for _type in (ModelData, ModelParams, BlockWhitening, RankOneWhitening, SamplerState, DrawInfo):
    export.register_namedtuple_serialization(_type, serialized_name=f"gmenn_formula.{_type.__name__}")


def store_dir() -> Path:
    """``gmenn_formula/exported`` under ``$XDG_CACHE_HOME`` (default ``~/.cache``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "gmenn_formula" / "exported"


@lru_cache(maxsize=1)
def _environment_digest() -> str:
    """Digest of the library versions and the package source that every key includes."""
    digest = hashlib.sha256()
    for library in LIBRARIES:
        digest.update(f"{library}={metadata.version(library)};".encode())
    package = Path(__file__).resolve().parent.parent
    for folder in SOURCES:
        for path in sorted((package / folder).glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def entry_path(name: str, description: str) -> Path:
    """The file of function ``name`` traced for ``description`` (its shapes, dtypes and settings)."""
    digest = hashlib.sha256(f"{_environment_digest()}|{jax.default_backend()}|{name}|{description}".encode()).hexdigest()
    return store_dir() / f"{name}-{digest[:40]}{SUFFIX}"


def load(path: Path) -> export.Exported | None:
    """The stored function at ``path``, or None when there is none or it cannot be read."""
    try:
        return export.deserialize(bytearray(path.read_bytes()))
    except Exception:  # missing, truncated, or from an incompatible writer: trace anew
        return None


def save(path: Path, exported: export.Exported) -> None:
    """Store ``exported`` at ``path`` (written to a temporary file and renamed, so a reader never
    sees half an entry); a failure leaves the store as it was."""
    try:
        payload = exported.serialize()
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except Exception:  # no flatbuffers, an unserializable pytree, a read-only cache: not stored
        return
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
        os.replace(temporary, path)
    except OSError:  # a full disk
        with contextlib.suppress(OSError):
            os.unlink(temporary)
