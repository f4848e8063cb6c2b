"""TFDS builders for the ReID benchmarks, installed under the import name ``reid_jax_datasets``.

One sub-package per dataset (builder, README with citation/licence/manual-download steps, and a
generator of a fake raw folder used by the tests). The folder is named ``datasets/`` in the repository
but is never imported under that name: it would shadow the Hugging Face ``datasets`` package.
"""
