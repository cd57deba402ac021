"""Data-parallel fits over several processes (torchrun): the process group, Parquet shards and
shared encodings. See docs/distributed.md."""
