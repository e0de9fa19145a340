"""Peak memory of decoding (and preprocessing) one file, per input kind, hostile ones included.

Each kind is written into a temporary folder (hostile files are built with
pydicom and Pillow by `tests/cxrdata/hostile_files.py`), then decoded with
`cxrdata.decode_image` and, if that succeeds, resized to `--image-size` with
`cxrdata.preprocess_image` (equalize none), in a fresh Python process per
file. The peak is the process's high-water mark (VmHWM) minus its resident
size after the imports, so it counts what this one file cost. For DICOM files
whose pixels tensorflow-io decodes, that decode runs in a helper process
(`cxrdata._native`): its own peak is reported apart ("helper MB"). Prints a
markdown table and writes JSON; it reports, it does not assert.

Usage:
    python benchmarks/decode_memory.py [--image-size 299] [--out bench-output/decode_memory.json]
    python benchmarks/decode_memory.py --smoke   # small sizes, a few seconds per row
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up noise

import argparse
import json
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]  # _common, and the hostile-file builders the tests use
import numpy as np  # noqa: E402
from _common import markdown_table, write_json  # noqa: E402

HEADERS = ["input", "file KB", "claims", "result", "peak MB", "helper MB", "seconds"]

# Runs in a fresh process: decode (and preprocess) one file, print what it cost as JSON.
_MEASURE = """
import json, sys, time
import numpy as np, PIL.Image, PIL.JpegImagePlugin, PIL.PngImagePlugin, PIL.TiffImagePlugin, pydicom, zlib
import cxrdata

def status(key, pid="self"):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

path, size = sys.argv[1], int(sys.argv[2])
data = open(path, "rb").read()
before, start = status("VmRSS"), time.perf_counter()
try:
    image = cxrdata.decode_image(data, name=path)
    cxrdata.preprocess_image(image, cxrdata.PreprocessConfig(image_size=size, equalize="none"))
    result = "x".join(map(str, image.shape))
except Exception as e:
    result = "reject: " + str(e)
seconds = time.perf_counter() - start
helper = None
try:
    from cxrdata import _native
    if _native._HELPER._proc is not None:
        helper = status("VmHWM", _native._HELPER._proc.pid)
except (ImportError, AttributeError, OSError):
    pass
print(json.dumps({"peak": status("VmHWM") - before, "result": result, "seconds": seconds, "helper": helper}))
"""


def _inputs(folder: str, smoke: bool) -> list[tuple[str, str, str]]:
    """(name, path, what it claims) for each kind, written into `folder`."""
    from PIL import Image
    from pydicom.uid import JPEG2000Lossless

    from tests.cxrdata import hostile_files as hostile

    side16, side_jpeg, side_dcm = (1200, 1600, 800) if smoke else (9400, 6000, 4000)
    frames = 256 if smoke else 4096  # of 512x512 8-bit: 64 MiB or 1 GiB
    kinds = []

    def write(name, data, claims):
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        kinds.append((name, path, claims))

    wide = (np.add.outer(np.arange(side16, dtype=np.uint32), np.arange(side16, dtype=np.uint32)) * 3).astype(
        np.uint16
    )
    Image.fromarray(wide).save(os.path.join(folder, "png16.png"), compress_level=1)
    kinds.append(("png16.png", os.path.join(folder, "png16.png"), f"{side16}x{side16} 16-bit"))
    del wide
    ramp = (np.add.outer(np.arange(side_jpeg), np.arange(side_jpeg)) // 23 % 256).astype(np.uint8)
    write(
        "jpeg-rgb.jpg",
        hostile.jpeg(np.stack([ramp, 255 - ramp, ramp // 2], -1), quality=85),
        f"{side_jpeg}x{side_jpeg} RGB",
    )
    write(
        "jpeg-gray.jpg",
        hostile.jpeg(ramp[: side_jpeg // 2, : side_jpeg // 2]),
        f"{side_jpeg // 2}x{side_jpeg // 2} gray",
    )
    for mode, progressive in (("L", False), ("RGB", False), ("RGB", True)):
        name = f"jpeg-claims-9000-{mode.lower()}{'-progressive' if progressive else ''}.jpg"
        write(name, hostile.jpeg_claiming(9000, 9000, mode=mode, progressive=progressive), "9000x9000")
    frame = hostile.gradient(512, 512)
    write("dicom-deflated.dcm", hostile.deflated_dicom(frame, frames), f"{frames} frames of 512x512")
    write(
        "dicom-deflated-lying.dcm",
        hostile.deflated_dicom(frame, frames, claimed_frames=1),
        f"1 frame, {frames} inside",
    )
    write("dicom-header-30000.dcm", _huge_header(hostile), "30000x30000 16-bit")
    write(
        "dicom-16bit.dcm",
        hostile.dicom(hostile.gradient(side_dcm, side_dcm, 4095), bits_stored=12),
        f"{side_dcm}x{side_dcm} 12-bit",
    )
    j2k = hostile.j2k(hostile.gradient(side_dcm // 2, side_dcm // 2, 4095).astype(np.uint16))
    write(
        "dicom-j2k.dcm",
        hostile.dicom(shape=(side_dcm // 2,) * 2, bits_stored=12, syntax=JPEG2000Lossless, pixel_data=j2k),
        f"{side_dcm // 2}x{side_dcm // 2} J2K",
    )
    write("dicom-j2k-crash.dcm", hostile.crashing_dicom(), "32x32 8-bit (16-bit J2K inside)")
    return kinds


def _huge_header(hostile) -> bytes:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(hostile.dicom(np.zeros((32, 32)), bits_stored=16)))
    ds.Rows = ds.Columns = 30000
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def measure(path: str, image_size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, path, str(image_size)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return {
            "peak": None,
            "result": f"process died (exit code {out.returncode})",
            "seconds": None,
            "helper": None,
        }
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, default=299, help="preprocessing size (default: 299)")
    parser.add_argument("--smoke", action="store_true", help="small inputs: a quick check that it runs")
    parser.add_argument("--out", default="bench-output/decode_memory.json")
    args = parser.parse_args(argv)
    rows, records = [], []
    with tempfile.TemporaryDirectory(prefix="decode-memory-") as folder:
        for name, path, claims in _inputs(folder, args.smoke):
            start = time.perf_counter()
            m = measure(path, args.image_size)
            size_kb = os.path.getsize(path) / 1e3
            mb = lambda v: None if v is None else round(v / 1e6, 1)  # noqa: E731
            result = m["result"] if len(m["result"]) <= 60 else m["result"][:57] + "..."
            rows.append(
                [
                    name,
                    round(size_kb, 1),
                    claims,
                    result,
                    mb(m["peak"]),
                    mb(m["helper"]) or "",
                    round(m["seconds"] or 0, 2),
                ]
            )
            records.append(
                {
                    "input": name,
                    "file_kb": size_kb,
                    "claims": claims,
                    **m,
                    "wall_s": time.perf_counter() - start,
                }
            )
    print(markdown_table(HEADERS, rows))
    write_json(
        args.out,
        {"benchmark": "decode_memory", "image_size": args.image_size, "smoke": args.smoke, "rows": records},
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
