"""Helpers both `cxrdata` and `cxrmodels` use, one home each.

- `io`: atomic writes and file digests (nothing half-written under a final name).
- `argument_validation`: the argument checks and their one rule per kind of mistake.
- `output_dir`: the fresh/resume/overwrite rule for an output folder, and its lock.
- `figures`: writing a Matplotlib figure to PNG atomically.
- `compat`: the only place private Keras and keras-tuner APIs are reached.
"""
