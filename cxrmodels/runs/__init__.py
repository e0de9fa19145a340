"""The run folder's format, at the bottom of the import graph: file names, `config.json`, history, curves.

Training writes a run folder; evaluation, serving and tuning read it. Only the
format lives here (`run_folder`); loading a run's model is `cxrmodels.models.saving.load_run_model`.
"""
