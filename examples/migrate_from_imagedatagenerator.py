"""Migrating from Keras' `ImageDataGenerator` to `cxrdata`: the same training input, side by side.

The reference notebook reads equalized PNGs every epoch through

    ImageDataGenerator(rotation_range=15, zoom_range=0.2, width_shift_range=0.2,
                       height_shift_range=0.2, shear_range=0.2)
        .flow_from_directory(dir, target_size=(299, 299), color_mode="grayscale",
                             batch_size=32, class_mode="categorical")

`ImageDataGenerator` is gone from Keras 3 (it survives in the legacy `tf_keras`
package) and warps every image in Python on the CPU. With `cxrdata` the same
input is built in three steps:

    1. `cxrdata.convert`   once: decode, grayscale, resize, equalize, write TFRecord shards
                           with train/val/test splits (replaces the notebook's equalize-and-save
                           loop, `target_size`, `color_mode` and `validation_split`);
    2. `cxrdata.load`      every epoch: uint8 batches and one-hot labels from the shards
                           (replaces `flow_from_directory`'s reading, `batch_size`,
                           `class_mode`, `shuffle` and `seed`);
    3. `cxrdata.RandomAffine.from_image_data_generator(...)` inside the model: the same
                           random rotation, zoom, shift and shear, run on the accelerator
                           (replaces the generator's augmentation arguments).

This script runs both on a small tree of synthetic phantoms in a temporary
folder, prints one batch from each side, and trains one epoch through the new
pipeline. The old side is skipped, with a message, when `tf_keras` is missing.

Usage:
    python examples/migrate_from_imagedatagenerator.py
    python examples/migrate_from_imagedatagenerator.py --per-class 40 --image-size 128
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The notebook's augmentation arguments. `RandomAffine.from_image_data_generator`
# takes them unchanged, so the two sides below use the very same dict.
AUGMENTATION = dict(
    rotation_range=15,  # degrees, uniform in [-15, 15]              -> RandomAffine(rotation=15)
    zoom_range=0.2,  # x and y factors drawn apart in [0.8, 1.2]  -> zoom=0.2
    width_shift_range=0.2,  # fraction of the size (<1), pixels (>=1)    -> width_shift=0.2
    height_shift_range=0.2,  #                                            -> height_shift=0.2
    shear_range=0.2,  # DEGREES: 0.2 is almost no shear            -> shear=0.2
)


def describe(name: str, images, labels) -> None:
    import numpy as np

    images, labels = np.asarray(images), np.asarray(labels)
    print(
        f"  {name}: images {images.shape} {images.dtype} in [{images.min():g}, {images.max():g}], "
        f"labels {labels.shape} {labels.dtype}"
    )


def old_way(src: str, *, image_size: int, batch_size: int, seed: int) -> None:
    """The notebook's input, unchanged (tf_keras, Keras 2)."""
    if importlib.util.find_spec("tf_keras") is None:
        print("  skipped: tf_keras is not installed (pip install tf_keras==2.16.0 to compare)")
        return
    from tf_keras.preprocessing.image import ImageDataGenerator

    datagen = ImageDataGenerator(**AUGMENTATION)
    flow = datagen.flow_from_directory(
        src,
        target_size=(image_size, image_size),  # resized on every read, every epoch
        color_mode="grayscale",
        batch_size=batch_size,
        class_mode="categorical",  # one-hot float32 labels
        shuffle=True,
        seed=seed,
    )
    images, labels = next(flow)
    # float32 pixels 0..255: no `rescale` was given, so the model must scale them.
    describe("ImageDataGenerator batch", images, labels)
    print(f"  classes: {flow.class_indices}")


def build_model(image_size: int, num_classes: int, augment):
    """The model, with the augmentation as its first layer (it is a no-op at inference)."""
    import keras

    try:
        from cxrmodels import create_model

        # The reference CNN; it takes uint8, casts and scales to [0, 1] itself.
        return create_model(
            "seed_cnn", input_shape=(image_size, image_size, 1), num_classes=num_classes, augment=augment
        )
    except ImportError:  # an older cxr without the model registry: the same idea by hand
        return keras.Sequential(
            [
                keras.Input((image_size, image_size, 1), dtype="uint8"),
                augment,  # runs on the GPU when there is one
                keras.layers.Rescaling(1 / 255),  # was ImageDataGenerator(rescale=1/255)
                keras.layers.Conv2D(16, 3, activation="relu"),
                keras.layers.MaxPooling2D(2),
                keras.layers.Conv2D(32, 3, activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(num_classes, activation="softmax"),
            ]
        )


def new_way(src: str, work: str, *, image_size: int, batch_size: int, seed: int, epochs: int) -> None:
    """The same input with cxrdata, and one short training run to show it fits."""
    import cxrdata

    # 1. Once: what `target_size` and `color_mode="grayscale"` did on every read, plus the
    #    notebook's equalization, and the split that `validation_split` made.
    data = os.path.join(work, "data")
    result = cxrdata.convert(
        src, data, image_size=image_size, splits=(0.7, 0.15, 0.15), seed=seed, progress=False
    )
    print(f"  {result.summary(data)}")

    # 2. Every epoch: `batch_size`, `shuffle` and `seed` as in flow_from_directory;
    #    labels one-hot as class_mode="categorical". Images stay uint8 (4x smaller than float32).
    train = cxrdata.load(data, "train", batch_size=batch_size, seed=seed)
    val = cxrdata.load(data, "val", batch_size=batch_size, shuffle=False)
    images, labels = next(iter(train))
    describe("cxrdata.load batch", images, labels)

    # 3. The augmentation, from the generator's own arguments, inside the model. To augment on
    #    the CPU instead (no GPU), pass it to the pipeline: cxrdata.load(..., augment=augment).
    augment = cxrdata.RandomAffine.from_image_data_generator(seed=seed, **AUGMENTATION)
    num_classes = labels.shape[-1]
    model = build_model(image_size, num_classes, augment)
    print(f"  model {model.name!r}, first layers: {[layer.name for layer in model.layers[:3]]}")
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    # model.fit_generator(flow, steps_per_epoch=...) becomes a plain fit on the dataset, whose
    # epoch length is known. The dataset shuffles itself (seeded), so Keras' shuffle is off.
    history = model.fit(train, validation_data=val, epochs=epochs, shuffle=False, verbose=2)
    print(f"  trained {epochs} epoch(s): loss {history.history['loss'][-1]:.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=24, help="phantoms per class (default: 24)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=64,
        help="299 as in the notebook; small by default to run in seconds (default: 64)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="32 in the notebook (default: 8)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from cxrdata.synthetic import write_tree

    with tempfile.TemporaryDirectory() as work:
        src = os.path.join(work, "phantoms")  # src/COVID/*.png, src/Normal/*.png
        write_tree(src, per_class=args.per_class, image_size=args.image_size, seed=args.seed)
        options = dict(image_size=args.image_size, batch_size=args.batch_size, seed=args.seed)
        print("Before: tf_keras ImageDataGenerator.flow_from_directory")
        old_way(src, **options)
        print("After: cxrdata.convert + cxrdata.load + RandomAffine in the model")
        new_way(src, work, epochs=args.epochs, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
