"""Package list only (metadata is in pyproject.toml).

The TFDS builders live in ``datasets/`` but install under the import name ``reid_jax_datasets``:
a top-level ``datasets`` would shadow the Hugging Face package of that name.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=['reid_jax', 'reid_jax.*'])
    + ['reid_jax_datasets']
    + ['reid_jax_datasets.' + p for p in find_packages('datasets')],
    package_dir={'reid_jax_datasets': 'datasets'},
    # Each builder's README holds its description and citation (read by TFDS at build time).
    package_data={'reid_jax_datasets': ['*/README.md', '*/*.md']},
)
