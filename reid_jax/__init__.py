"""reid_jax: person re-identification in JAX/Flax NNX.

``reid_jax.FeatureExtractor(config, checkpoint)``: images -> ReID features
(``reid_jax.feature_extractor``; imported on first use, so ``import reid_jax`` stays light).
"""

__version__ = '0.1.0'


def __getattr__(name):
  if name == 'FeatureExtractor':
    from reid_jax.feature_extractor import FeatureExtractor
    return FeatureExtractor
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
