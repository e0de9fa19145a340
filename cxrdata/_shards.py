"""Running a conversion plan: the per-image work in worker processes, and writing shards.

`cxrdata.conversion` fixes the plan (which image goes to which shard, in which
order); this module carries it out, and so does `cxrdata.beam_conversion` with
the same functions: `_process` turns one planned image into its record's
payload in a worker, `_write_shard` writes one shard from those results in plan
order under a temporary name, records it in the partial folder, then renames it.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass

import numpy as np

from cxrdata._pool import OrderedResults
from cxrdata.decoding import DecodeError, FlatImageError, decode_image
from cxrdata.manifest import shard_name
from cxrdata.preprocess import PreprocessConfig, preprocess_image, resize
from cxrdata.sources import Source
from cxrdata.utils.io import atomic_write_text, open_regular


@dataclass(frozen=True)
class _Item:
    source: Source
    label: int
    sha256: str


def _process(args: tuple) -> tuple:
    """Worker: decode, preprocess and encode one image and its mask.

    Returns (ok, payload or reason, h, w, mask): `mask` is PNG bytes, a reason
    why the mask was not used (str), or None when the image has no mask.
    """
    path, name, config_dict, encoding = args[:4]
    mask_path = args[4] if len(args) > 4 else None
    try:
        with open_regular(path) as f:
            data = f.read()
        original = decode_image(data, name=name, dicom_window=config_dict["dicom_window"])
        image = preprocess_image(original, PreprocessConfig.from_dict(config_dict))
    except DecodeError as e:
        return False, str(e), 0, 0, None
    except FileNotFoundError:
        return False, "file not found", 0, 0, None
    except OSError as e:
        return False, f"unreadable: {e.strerror or e}", 0, 0, None
    except Exception as e:  # one bad file never stops the job
        return False, f"{type(e).__name__}: {e}", 0, 0, None
    mask = None if mask_path is None else _process_mask(mask_path, original.shape, config_dict)
    if encoding == "png":
        return True, _png(image), image.shape[0], image.shape[1], mask
    return True, image.tobytes(), image.shape[0], image.shape[1], mask


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _process_mask(path: str, shape: tuple[int, int], config_dict: dict) -> bytes | str:
    """A lung mask as the PNG its record stores (0 and 255), or why it cannot be used.

    The mask is brought to the source image's size first (Kaggle's masks are
    256x256 beside 299x299 images), then resized exactly as the image was
    (same aspect handling), always by nearest neighbour so it stays binary.
    """
    import dataclasses

    from PIL import Image

    try:
        mask = decode_image(path)
    except FlatImageError as e:  # one gray level: a mask marking every pixel or none, as before
        if e.value is None:
            return f"mask not used: {e}"
        mask = np.full(shape, e.value, np.uint8)
    except (DecodeError, OSError) as e:
        return f"mask not used: {e}"
    if mask.shape != shape:
        mask = np.array(Image.fromarray(mask, mode="L").resize(shape[::-1], Image.Resampling.NEAREST))
    config = dataclasses.replace(PreprocessConfig.from_dict(config_dict), interpolation="nearest")
    mask = np.where(resize(mask, config) >= 128, 255, 0).astype(np.uint8)
    if not mask.any():
        return "mask not used: it marks no pixel"
    return _png(mask)


def _process_chunk(chunk: list[tuple]) -> list[tuple]:
    return [_process(a) for a in chunk]


def _write_shards(out, partial, plan, class_names, preprocessing, encoding, workers, progress) -> None:
    from tqdm.auto import tqdm

    pending = _pending_shards(out, plan)
    cfg = preprocessing
    tasks = [_task(it, cfg, encoding) for _, _, shard in pending for it in shard]
    # Starts the workers before TensorFlow loads here.
    results = OrderedResults(tasks, workers, _process, _process_chunk)

    bar = tqdm(total=len(tasks), desc="Converting", unit="img", disable=not progress, smoothing=0.1)

    def in_order(shard):
        for it in shard:
            result = next(results)
            bar.update(1)
            yield it, result

    try:
        for split, i, shard in pending:
            _write_shard(out, partial, shard_name(split, i, len(plan[split])), in_order(shard), class_names)
    finally:
        bar.close()
        results.close()


def _pending_shards(out, plan) -> list[tuple[str, int, list[_Item]]]:
    """Removes a killed run's temporary files; returns the (split, index, items) not yet written."""
    for name in os.listdir(out):
        if name.startswith(".") and name.endswith(".tmp"):
            os.unlink(os.path.join(out, name))
    return [
        (split, i, shard)
        for split, shards in plan.items()
        for i, shard in enumerate(shards)
        if not os.path.exists(os.path.join(out, shard_name(split, i, len(shards))))
    ]


def _task(item: _Item, cfg: dict, encoding: str) -> tuple[str, str, dict, str, str | None]:
    """The arguments of `_process` for one planned image (and its lung mask, if any)."""
    return item.source.path, os.path.basename(item.source.path), cfg, encoding, item.source.mask


def _write_shard(out, partial, name, results, class_names, *, tmp_path=None) -> None:
    """Writes one shard from `(item, _process result)` pairs in plan order.

    The shard is written under a hidden temporary name; its record (digest,
    counts, rejects) is saved in `partial` before it is renamed, so a shard under
    its final name always has one. Each runner calls this once per shard.
    """
    from cxrdata.records import ShardWriter, serialize_example  # deferred: records imports TensorFlow

    writer = ShardWriter(os.path.join(out, name), tmp_path=tmp_path)
    counts = {c: 0 for c in class_names}
    shard_rejects, with_mask, groups = [], 0, {}
    try:
        for it, (ok, payload, h, w, mask) in results:
            if not ok:
                shard_rejects.append([it.source.relpath, payload])
                continue
            if isinstance(mask, str):  # the mask could not be used: the image is kept without one
                shard_rejects.append([_relative_mask(it.source), mask])
                mask = None
            writer.write(
                serialize_example(
                    image=payload,
                    height=h,
                    width=w,
                    label=it.label,
                    class_name=class_names[it.label],
                    group=it.source.group,
                    path=it.source.relpath,
                    sha256=it.sha256,
                    mask=mask or b"",
                )
            )
            counts[class_names[it.label]] += 1
            with_mask += mask is not None
            groups[it.source.group] = groups.get(it.source.group, 0) + 1
        info = writer.finish()
    except BaseException:
        writer.abort()
        raise
    record = {
        "shard": info.__dict__,
        "counts": counts,
        "rejects": shard_rejects,
        "masks": with_mask,
        "groups": groups,
    }
    atomic_write_text(os.path.join(partial, name + ".json"), json.dumps(record) + "\n")
    writer.commit()


def _relative_mask(source) -> str:
    """The mask's path for rejects.csv: beside its image's relative path when it can be."""
    root = source.path[: len(source.path) - len(source.relpath)]
    if root and source.mask.startswith(root):
        return source.mask[len(root) :]
    return source.mask
