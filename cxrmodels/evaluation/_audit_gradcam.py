"""Class-discriminative Grad-CAM for the shortcut audit, and whether its map can resolve the lungs.

For each class c the map is Grad-CAM of the difference between c's logit and the mean of the
other classes' logits (with two classes: logit c minus the other's), so it shows where the
evidence *for c against the others* lies, not where the model sees "anything". Every audited
image counts for every class, whatever its label: an image's maps are divided by its total
evidence (all classes' maps together), and class c's share inside the lungs pools
evidence-weighted images, so an image with little evidence for c weighs little and none is
left out by a rule that depends on its class.

A map computed on a 9x9 feature grid and upsampled cannot follow the lungs' outline: even a
model looking only at the lungs would spread energy outside them. The audit measures this
for its own masks (`resolution`) and says so instead of judging.
"""

from __future__ import annotations

import numpy as np

from cxrmodels.evaluation._audit_checks import MIN_RESOLVED_SHARE


def class_maps(grad_model, images: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """`(maps [N, K, H, W] >= 0, feature map (h, w))`: each class's contrast Grad-CAM at input size.

    Args:
        grad_model: `cxrmodels.serving.prediction.gradcam_model(model)`.
        images: A batch `[N, H, W, C]` as the model takes it.
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(images)
    with tf.GradientTape(persistent=True) as tape:
        features, scores, _ = grad_model(x, training=False)
        scores = tf.cast(scores, tf.float32)
        # Images are independent in inference mode, so the gradient of a sum over the batch is each
        # image's own gradient.
        totals = [tf.reduce_sum(scores[:, k]) for k in range(scores.shape[-1])]
    weights = tf.stack(
        [tf.reduce_mean(tf.cast(tape.gradient(t, features), tf.float32), axis=(1, 2)) for t in totals], axis=1
    )  # [N, K, channels]
    del tape
    k = weights.shape[1]
    contrast = weights - (tf.reduce_sum(weights, axis=1, keepdims=True) - weights) / max(1, k - 1)
    cams = tf.nn.relu(tf.einsum("nkc,nhwc->nhwk", contrast, tf.cast(features, tf.float32)))
    size = tuple(int(d) for d in features.shape[1:3])
    cams = tf.image.resize(cams, tf.shape(x)[1:3], method="bilinear")
    return np.maximum(np.transpose(cams.numpy(), (0, 3, 1, 2)), 0.0), size


def share_terms(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and class, `(evidence inside the lungs, evidence x the lungs' area share, evidence)`.

    All are fractions of the image's total evidence (every class's), so over images
    `sum(inside) / sum(evidence)` is the evidence-weighted share inside the lungs, `sum(blind) /
    sum(evidence)` what a map blind to anatomy would give, and `sum(inside) / sum(blind)` their
    ratio. Returns three `[N, K]` arrays.
    """
    inside = masks[:, None].astype(np.float32)
    per_class = maps.reshape(*maps.shape[:2], -1).sum(axis=2)  # [N, K]
    total = np.maximum(per_class.sum(axis=1, keepdims=True), 1e-12)
    within = (maps * inside).reshape(*maps.shape[:2], -1).sum(axis=2)
    area = masks.reshape(len(masks), -1).mean(axis=1)[:, None]
    return within / total, per_class / total * area, per_class / total


def ideal_shares(masks: np.ndarray, feature_map: tuple[int, int]) -> np.ndarray:
    """Per image, the share inside its mask of the best map a `feature_map` grid allows.

    That map is the mask averaged over the feature cells and upsampled bilinearly, as Grad-CAM is.
    """
    import tensorflow as tf

    m = tf.convert_to_tensor(masks[..., None].astype(np.float32))
    ideal = tf.image.resize(
        tf.image.resize(m, feature_map, method="area"), masks.shape[1:3], method="bilinear"
    )
    ideal = ideal.numpy()[..., 0].reshape(len(masks), -1)
    return (ideal * masks.reshape(len(masks), -1)).sum(axis=1) / np.maximum(ideal.sum(axis=1), 1e-12)


def resolution(shares: np.ndarray, feature_map: tuple[int, int] | None) -> dict:
    """Whether the map resolves the lungs: the median of `ideal_shares` reaches `MIN_RESOLVED_SHARE`."""

    grid = "n/a" if feature_map is None else f"{feature_map[0]}x{feature_map[1]}"
    median = float(np.median(shares)) if len(shares) else 0.0
    resolved = median >= MIN_RESOLVED_SHARE
    why = (
        f"the {grid} feature map is too coarse to resolve the lungs: a map following them exactly would "
        f"put only {median:.2f} of its energy inside them (needs {MIN_RESOLVED_SHARE:.2f}); choose a finer "
        "layer (gradcam_layer) or a larger input"
    )
    return {
        "feature_map": grid,
        "ideal_share": median,
        "resolved": bool(resolved),
        "why": None if resolved else why,
    }
