"""The SSD fork's detection data: AnnotatedDatum LMDBs and the tools that make them.

- ``layer``: the AnnotatedData layer type; ``plan``: its per-image choices, in the fork's order;
- ``boxes``: NormalizedBBox arithmetic in float32; ``sampler``: the batch samplers;
- ``pixels``: the image operations (distort, expand, crop, resize, noise).
"""
