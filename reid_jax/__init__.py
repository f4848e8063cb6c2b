"""reid_jax: person re-identification in JAX/Flax NNX."""

__version__ = '0.1.0'
