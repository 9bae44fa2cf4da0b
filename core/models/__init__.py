"""The model-family layer: everything specific to a model lives here, behind one interface.

- `registry`: picks the family and variant from a checkpoint's own configs (torch-free) and opens
  the family's runtime object;
- `source`: where a base model's files come from (a local folder or a Hub id; torch-free);
- `cogvideox_spec`: CogVideoX's shape rules, variants and model-card code (torch-free);
- `cogvideox`: CogVideoX's loaders, named conditions, loss, sampling and LoRA files (torch);
- `cogvideox_tiny`: tiny random CogVideoX checkpoints for tests and demos;
- `common`: what every family shares (dtypes, per-sample draws, loading a component).
Outside this package no module names a model's classes. Importing the package loads nothing.
"""
