"""``synthetic_reid``: procedurally generated person ReID data (no download, seeded)."""

from reid_jax_datasets.synthetic_reid.synthetic_reid import SyntheticReid  # noqa: F401
