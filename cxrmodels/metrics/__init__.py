"""Metrics, at the bottom of the import graph: numpy clinical metrics and the Keras metrics of training.

`clinical` computes what a study reports from labels and probabilities
(sensitivity, specificity, AUC with bootstrap intervals, the decision
threshold); `keras_metrics` holds the metrics `Model.fit` tracks. Training,
tuning, evaluation and serving all build on these; they import nothing above.
"""
