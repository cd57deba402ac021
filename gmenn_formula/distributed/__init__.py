"""Data-parallel fits over several processes (torchrun): the process group, Parquet shards,
shared encodings and the fit of a model to them (:func:`~gmenn_formula.distributed.fit.fit_shards`).
See docs/distributed.md."""
