"""Keras metrics that training compiles with: specificity, and the default metric list.

Backend-agnostic (`keras.ops` only). These are running estimates for training
logs; the reported clinical numbers come from `cxrmodels.metrics.clinical` on the saved
predictions.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cxrmodels")
class Specificity(keras.metrics.Metric):
    """Specificity of one class, TN / (TN + FP), accumulated over batches.

    A case is predicted positive when the class's score is above `thresholds`
    (strictly, as in `keras.metrics.Precision` and `Recall`, so the three agree).
    Labels may be one-hot ([B, K], like the predictions) or sparse integer
    labels ([B] or [B, 1]). Predictions of width 1 are read as the probability
    of the positive class, with 0/1 labels. With no negatives seen the result is 0.

    Args:
        class_id: The positive class index. Defaults to None, meaning 1.
        thresholds: The decision threshold in [0, 1]. Defaults to 0.5.
        name: The metric name. Defaults to "specificity".
        dtype: The dtype of the result. Defaults to None (float32).

    Example:
        >>> m = Specificity(class_id=1)
        >>> m.update_state([[1, 0], [1, 0], [0, 1]], [[0.9, 0.1], [0.3, 0.7], [0.2, 0.8]])
        >>> float(m.result())
        0.5
    """

    def __init__(
        self, class_id: int | None = None, thresholds: float = 0.5, name: str = "specificity", dtype=None
    ):
        super().__init__(name=name, dtype=dtype)
        if class_id is not None and (
            not isinstance(class_id, int) or isinstance(class_id, bool) or class_id < 0
        ):
            raise ValueError(f"`class_id` must be None or an integer >= 0. Received: class_id={class_id}")
        if (
            isinstance(thresholds, bool)
            or not isinstance(thresholds, (int, float))
            or not 0 <= thresholds <= 1
        ):
            raise ValueError(f"`thresholds` must be a number in [0, 1]. Received: thresholds={thresholds}")
        self.class_id = class_id
        self.thresholds = float(thresholds)
        self.true_negatives = self.add_variable(shape=(), initializer="zeros", name="true_negatives")
        self.false_positives = self.add_variable(shape=(), initializer="zeros", name="false_positives")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds one batch's true negatives and false positives."""
        y_pred = ops.cast(ops.convert_to_tensor(y_pred), self.dtype)
        y_true = ops.convert_to_tensor(y_true)
        truth = ops.cast(y_true, self.dtype)
        cid = 1 if self.class_id is None else self.class_id
        width = y_pred.shape[-1] if len(y_pred.shape) > 1 else 1
        if width == 1:
            score, positive = ops.reshape(y_pred, [-1]), ops.reshape(truth, [-1]) > 0.5
        else:
            if width is not None and cid >= width:
                raise ValueError(
                    f"`class_id` must be less than the number of classes {width}. "
                    f"Received: class_id={cid}"
                )
            score = ops.reshape(ops.take(y_pred, cid, axis=-1), [-1])
            if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == width:  # one-hot
                positive = ops.reshape(ops.take(truth, cid, axis=-1), [-1]) > 0.5
            else:
                positive = ops.equal(ops.reshape(ops.cast(y_true, "int32"), [-1]), cid)
        negative = ops.cast(ops.logical_not(positive), self.dtype)
        called = ops.cast(score > self.thresholds, self.dtype)
        weight = 1.0
        if sample_weight is not None:
            weight = ops.broadcast_to(
                ops.reshape(ops.cast(sample_weight, self.dtype), [-1]), ops.shape(score)
            )
        self.true_negatives.assign_add(ops.sum(weight * negative * (1.0 - called)))
        self.false_positives.assign_add(ops.sum(weight * negative * called))

    def result(self):
        return ops.divide_no_nan(self.true_negatives, self.true_negatives + self.false_positives)

    def get_config(self) -> dict:
        return {**super().get_config(), "class_id": self.class_id, "thresholds": self.thresholds}


def default_metrics(num_classes: int, *, positive_index: int | None = None) -> list:
    """The metrics training compiles with, for one-hot labels and softmax outputs.

    Two classes: accuracy, the positive class's ROC AUC, precision (PPV),
    recall (sensitivity) and specificity of the positive class. The AUC uses
    `multi_label=True`: Keras' default AUC flattens both softmax columns,
    which is not the positive class's AUC, while the per-column mean is,
    since the two columns of a two-class softmax rank cases oppositely.
    More classes: accuracy, micro-averaged AUC, precision and recall.

    Args:
        num_classes: The number of classes (>= 2).
        positive_index: The positive class; required for two classes (see
            `cxrmodels.metrics.clinical.positive_class_index`), ignored for more.
            Defaults to None.

    Returns:
        A list for `model.compile(metrics=...)`, named accuracy, auc,
        precision, recall (and specificity for two classes).

    Raises:
        ValueError: If `num_classes < 2`, or for two classes if `positive_index`
            is not 0 or 1.

    Example:
        >>> model.compile(optimizer="adam", loss="categorical_crossentropy",
        ...               metrics=default_metrics(2, positive_index=1))
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes}")
    if num_classes > 2:
        return [
            "accuracy",
            keras.metrics.AUC(name="auc", multi_label=False),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
        ]
    if positive_index not in (0, 1) or isinstance(positive_index, bool):
        raise ValueError(
            f"`positive_index` must be 0 or 1 for two classes. Received: positive_index={positive_index}"
        )
    return [
        "accuracy",
        keras.metrics.AUC(name="auc", multi_label=True, num_labels=2),
        keras.metrics.Precision(name="precision", class_id=positive_index),
        keras.metrics.Recall(name="recall", class_id=positive_index),
        Specificity(name="specificity", class_id=positive_index),
    ]
