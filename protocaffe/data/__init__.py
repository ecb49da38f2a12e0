"""Data input: LMDB reading, transformation, prefetching, and the data layers."""
