"""Per-image inference output files, named as ais_bench names them (docs/onnx_contract.md).

``{basename}_{i}.bin`` for output i = 0..3 (boxes, labels, scores, masks): raw
little-endian data of the output's dtype with the batch axis removed, or ``.npy``
(``--outfmt NPY``). The legacy naming (``--legacy-names``, the seed postprocess's)
numbers them 1..4. Files are written atomically, so an existing file is complete.
"""

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinamask.core.errors import InputError
from retinamask.core.fileio import atomic_open

OUTFMTS = ("BIN", "NPY")
NUM_OUTPUTS = 4
_OUTPUT_FILE = re.compile(r"^(?P<base>.+)_(?P<index>[0-4])\.(?P<ext>bin|npy)$")


def output_file_name(basename, index, outfmt="BIN", legacy_names=False):
    """``{basename}_{index}.bin`` (``index + 1`` with legacy names; ``.npy`` for NPY)."""
    number = index + 1 if legacy_names else index
    return f"{basename}_{number}.{_extension(outfmt)}"


def output_paths(out_dir, basename, outfmt="BIN", legacy_names=False):
    """The 4 output paths of one image, in output index order."""
    return [Path(out_dir) / output_file_name(basename, i, outfmt, legacy_names) for i in range(NUM_OUTPUTS)]


def _extension(outfmt):
    outfmt = str(outfmt).upper()
    if outfmt not in OUTFMTS:
        raise ValueError(f"outfmt must be one of {OUTFMTS}, got {outfmt!r}")
    return outfmt.lower()


def expected_file_size(spec, outfmt="BIN"):
    """Bytes of a complete output file for an :class:`~.model_info.OutputSpec`."""
    if str(outfmt).upper() == "BIN":
        return spec.nbytes
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(spec.dtype), "fortran_order": False, "shape": tuple(spec.shape)}
    )
    return len(header.getvalue()) + spec.nbytes


def write_image_outputs(out_dir, basename, arrays, specs, outfmt="BIN", legacy_names=False):
    """Write one image's 4 outputs atomically; returns their paths.

    arrays: the 4 outputs of this image, batch axis removed (e.g. boxes [K,4]); each is
    cast to its spec's dtype (labels int32, the rest float32, little-endian) and must
    have the spec's shape.
    """
    paths = output_paths(out_dir, basename, outfmt, legacy_names)
    for path, array, spec in zip(paths, arrays, specs):
        array = np.ascontiguousarray(array, dtype=spec.dtype)
        if array.shape != tuple(spec.shape):
            raise ValueError(f"output {spec.index} ({spec.name}) has shape {array.shape}, expected {spec.shape}")
        with atomic_open(path, "wb") as f:
            if str(outfmt).upper() == "BIN":
                array.tofile(f)
            else:
                np.save(f, array, allow_pickle=False)
    return paths


def outputs_complete(out_dir, basename, specs, outfmt="BIN", legacy_names=False):
    """True when all 4 output files of an image exist with the sizes ``specs`` give."""
    for path, spec in zip(output_paths(out_dir, basename, outfmt, legacy_names), specs):
        try:
            if path.stat().st_size != expected_file_size(spec, outfmt):
                return False
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class OutputFiles:
    """Where one image's outputs are: 4 paths in output index order, their format and naming."""

    paths: tuple
    outfmt: str
    legacy_names: bool


def find_output_files(results_dir, basename):
    """Locate an image's outputs under either naming (_0.._3 or _1.._4) and format (.bin/.npy).

    ``{basename}_0`` present means the ais_bench naming; otherwise ``{basename}_4``
    means the legacy one. Returns :class:`OutputFiles`; raises InputError naming the
    missing file(s) when no complete set exists.
    """
    results_dir = Path(results_dir)
    for outfmt in OUTFMTS:
        for legacy in (False, True):
            paths = output_paths(results_dir, basename, outfmt, legacy)
            marker = paths[0] if not legacy else paths[3]
            if not marker.exists():
                continue
            missing = [p.name for p in paths if not p.exists()]
            if missing:
                raise InputError(f"incomplete outputs: {', '.join(missing)} missing", marker)
            return OutputFiles(tuple(paths), outfmt, legacy)
    raise InputError(
        f"no outputs for {basename} ({basename}_0.bin..._3.bin, _1.._4 or .npy) in {results_dir}",
        results_dir / f"{basename}_0.bin",
    )


def read_output_file(path, spec, outfmt=None):
    """One output file -> array of ``spec.shape`` and ``spec.dtype``.

    Raises InputError naming the file when it is missing, truncated or longer than
    expected, of another shape or dtype (wrong layout?), or holds NaN/inf.
    """
    path = Path(path)
    outfmt = (outfmt or path.suffix.lstrip(".")).upper()
    what = f"{spec.dtype.name} [{', '.join(map(str, spec.shape))}]"
    try:
        if outfmt == "BIN":
            size = path.stat().st_size
            if size != spec.nbytes:
                rows = _rows_hint(size, spec)
                raise InputError(
                    f"{size} bytes, expected {spec.nbytes} ({what}){rows} — truncated, or another layout/model?", path
                )
            array = np.fromfile(path, dtype=spec.dtype).reshape(spec.shape)
        else:
            try:
                array = np.load(path, allow_pickle=False)
            except (ValueError, EOFError, OSError) as e:
                if isinstance(e, FileNotFoundError):
                    raise
                raise InputError(f"truncated or corrupt .npy ({e})", path) from None
            if array.shape == (1, *spec.shape):  # ais_bench keeps the batch axis in .npy outputs
                array = array[0]
            if array.shape != tuple(spec.shape):
                raise InputError(f"shape {list(array.shape)}, expected {what} — another layout/model?", path)
            if array.dtype != spec.dtype:
                if not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
                    raise InputError(f"dtype {array.dtype}, expected {spec.dtype.name}", path)
                array = array.astype(spec.dtype)
    except FileNotFoundError:
        raise InputError("output file not found", path) from None
    except PermissionError:
        raise InputError("cannot read: permission denied", path) from None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{bad} NaN/inf value(s) in {spec.name}", path)
    return array


def _rows_hint(size, spec):
    row_bytes = spec.nbytes // max(spec.shape[0], 1)
    if row_bytes and size % row_bytes == 0:
        return f"; it holds {size // row_bytes} rows, not {spec.shape[0]}"
    return ""


def read_image_outputs(files, specs):
    """The 4 arrays of one image from :class:`OutputFiles` (see :func:`read_output_file`)."""
    return [read_output_file(path, spec, files.outfmt) for path, spec in zip(files.paths, specs)]


def list_output_basenames(results_dir):
    """Basenames that have at least one output file in ``results_dir``, sorted."""
    names = set()
    for path in Path(results_dir).iterdir():
        match = _OUTPUT_FILE.match(path.name)
        if match:
            names.add(match.group("base"))
    return sorted(names)


def probe_output_geometry(files):
    """(rows K, mask resolution M) from the boxes and masks files' sizes or .npy headers.

    For reading .bin outputs when neither the model nor a run sidecar says the layout:
    boxes are [K,4] float32 and masks [K,1,M,M] float32. Raises InputError when the
    sizes do not fit that.
    """
    boxes_path, masks_path = files.paths[0], files.paths[3]
    if files.outfmt == "NPY":
        boxes_shape = _npy_shape(boxes_path)
        masks_shape = _npy_shape(masks_path)
        if len(boxes_shape) == 3 and boxes_shape[0] == 1:  # ais_bench keeps the batch axis
            boxes_shape, masks_shape = boxes_shape[1:], masks_shape[1:]
        if len(boxes_shape) != 2 or boxes_shape[1] != 4 or len(masks_shape) < 3:
            raise InputError(
                f"boxes {list(boxes_shape)} / masks {list(masks_shape)} are not [K,4] / [K,1,M,M]", boxes_path
            )
        return int(boxes_shape[0]), int(masks_shape[-1])
    try:
        boxes_bytes = boxes_path.stat().st_size
        masks_bytes = masks_path.stat().st_size
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", e.filename) from None
    if boxes_bytes == 0 or boxes_bytes % 16:
        raise InputError(f"{boxes_bytes} bytes is not float32 [K, 4] boxes", boxes_path)
    rows = boxes_bytes // 16
    side = round((masks_bytes / (4 * rows)) ** 0.5)
    if side <= 0 or side * side * 4 * rows != masks_bytes:
        raise InputError(f"{masks_bytes} bytes is not float32 [{rows}, 1, M, M] masks", masks_path)
    return rows, side


def _npy_shape(path):
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, _ = read_header(f)
    except FileNotFoundError:
        raise InputError("output file not found", path) from None
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"corrupt .npy header ({e})", path) from None
    return shape
