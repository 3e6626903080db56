"""The input files of ``retinamask preprocess`` (and of the Ascend seed's own script), read back:
the ``.info`` list, its JSON sidecar (``<info>.json``) and each raw float32 ``.bin`` tensor.

``{bin_dir}/{stem}.bin``
    Raw little-endian float32, NCHW [1, 3, S, S] (the seed's S x S canvas, S the sidecar's
    :data:`CANVAS_SIDE_KEY`)
    or [1, 3, H, W] (a canvas the sidecar's ``canvas_height`` / ``canvas_width`` give).
``{info}``
    One line per image: ``index bin_path width height``. Paths may contain spaces: the first
    field is the index and the last two are the size, everything between is the path.
``{info}.json`` (the sidecar)
    The settings and, per image, ``file_name, bin_name, width, height, resized_width,
    resized_height, scale`` (and S, ``canvas_width``, ``canvas_height`` where known).

The writer is :mod:`retinamask.data.preprocess`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinamask.core.contract import CANVAS_SIDE_KEY, SEED_CANVAS_SIDE
from retinamask.core.errors import InputError
from retinamask.core.resize import ResizePolicy, SeedResize, policy_from_dict

BIN_DTYPE = np.dtype("<f4")


def bin_nbytes(canvas):
    """Byte size of one input .bin: float32 [1, 3, S, S] (``canvas`` the seed's side S) or
    [1, 3, H, W] (``canvas`` = (H, W))."""
    h, w = (canvas, canvas) if isinstance(canvas, int) else canvas
    return 3 * int(h) * int(w) * BIN_DTYPE.itemsize


def sidecar_path_for(info_path):
    """The sidecar JSON beside an .info file: ``<info>.json``."""
    info_path = Path(info_path)
    return info_path.with_name(info_path.name + ".json")


def sidecar_policy(sidecar):
    """The resize policy dict a sidecar records (None for the seed's sidecars, which say S)."""
    policy = sidecar.get("resize")
    return policy if isinstance(policy, dict) else None


def inputs_policy(canvas_side=None, resize=None):
    """The resize policy .bin inputs were made with, from what their preprocess sidecar records:
    its ``resize`` dict (policies other than the seed's), else the seed's S (``canvas_side``);
    None when neither is known (no sidecar)."""
    if isinstance(resize, dict):
        return policy_from_dict(resize)
    return SeedResize(canvas_side) if canvas_side else None


def _named(policy):
    """'seed (long side 1344, canvas 1344x1344)': a policy's name and its sizes."""
    return f"{policy.name} ({policy.describe().split(': ', 1)[-1]})"


def _flags(policy, size_flag):
    return f"--resize seed {size_flag} {policy.size}" if isinstance(policy, SeedResize) else f"--resize {policy.name}"


def check_inputs_policy(inputs, model, model_runs_seed=None):
    """Can inputs made with the resize policy ``inputs`` run on a model that runs ``model``?

    Same policy: None (nothing to say). The original's resize padded otherwise (``original`` vs
    ``buckets``, a dynamic-H/W model takes any canvas): the line to log about it, (level, text). A
    pair whose resizes differ (the seed's S x S against the original's, or two seed sides S): raises
    InputError, one line naming both policies and the ways out. ``model_runs_seed``: the seed
    policy this model would run under ``--resize seed`` (a dynamic-H/W model), offered as a way out
    when it is the inputs'. None inputs or model: nothing known, nothing said.
    """
    if not isinstance(inputs, ResizePolicy) or not isinstance(model, ResizePolicy) or inputs == model:
        return None
    if not isinstance(inputs, SeedResize) and not isinstance(model, SeedResize):
        same_sizes = (inputs.min_size, inputs.max_size) == (model.min_size, model.max_size)
        if same_sizes:
            return (
                "info",
                f"the inputs were made with {_named(inputs)}, the model runs {_named(model)}: "
                "the same resize, their canvases are run as they are",
            )
        return (
            "warning",
            f"the inputs were made with {_named(inputs)}, the run asks for {_named(model)}: "
            "the inputs' canvases are run as they are",
        )
    ways = [
        f"export the model with {_flags(inputs, '--input-size')}",
        f"preprocess the images with {_flags(model, '--input_size')}",
        "stream from the images (infer --input <image folder>)",
    ]
    if inputs == model_runs_seed:
        ways.insert(0, "run this model with --resize seed (its valid regions as image_sizes)")
    raise InputError(
        f"the inputs were made with the resize policy {_named(inputs)}, but the model runs {_named(model)}; "
        f"they do not match. Ways out: {', '.join(ways[:-1])}, or {ways[-1]}"
    )


@dataclass(frozen=True)
class InfoRecord:
    """One .info line, completed from the sidecar where there is one.

    ``width``/``height``: as listed (the original image size in files written here;
    the seed's own .info files list the input size instead). The fields after
    ``name`` are None without a sidecar.
    """

    index: int
    bin_path: Path  # resolved to an existing file when read_info checks files
    width: int
    height: int
    name: str  # the .bin name without ".bin" (the seed's image id for COCO file names)
    file_name: str | None = None
    resized_width: int | None = None
    resized_height: int | None = None
    scale: float | None = None
    canvas_side: int | None = None  # the seed's S (None: a canvas_width x canvas_height canvas)
    mean: tuple | None = None
    std: tuple | None = None
    canvas_width: int | None = None  # the .bin's [1, 3, H, W]: from the sidecar (S x S for seed sidecars)
    canvas_height: int | None = None
    resize: dict | None = None  # the sidecar's resize policy (None for sidecars written before policies)

    @property
    def canvas_hw(self):
        """(H, W) of the .bin's tensor, or None when no sidecar says."""
        if self.canvas_height:
            return (self.canvas_height, self.canvas_width)
        return (self.canvas_side, self.canvas_side) if self.canvas_side else None

    def original_geometry(self):
        """The original image's name and sizes as an image-list entry (``file_name``, ``width``, ``height``,
        ``resized_width``, ``resized_height``); empty without a sidecar, where the .info's sizes may be
        the seed's input size instead."""
        if self.file_name is None:
            return {}
        return {
            "file_name": self.file_name,
            "width": self.width,
            "height": self.height,
            "resized_width": self.resized_width,
            "resized_height": self.resized_height,
        }


def read_info(info_path, check_files=True, sidecar_path=None):
    """Parse an .info file (and its sidecar ``<info>.json`` when present, or the
    given ``sidecar_path``) into a list of :class:`InfoRecord`, in file order.

    A relative bin path is looked up relative to the current directory (as the seed
    wrote it), then to the .info's folder, then as the bin name in the sidecar's
    ``bin_dir`` and in the .info's folder. Raises InputError naming the file and
    line for: unreadable file, malformed line, duplicate index or .bin name, a
    listed .bin that does not exist (``check_files``), a sidecar that is not valid
    or disagrees with the .info. :func:`read_info_lines` skips bad lines instead.
    """
    records, problems = read_info_lines(info_path, check_files, sidecar_path)
    if problems:
        raise InputError(problems[0], info_path)
    return records


def read_info_lines(info_path, check_files=True, sidecar_path=None):
    """Like :func:`read_info`, but a bad line is skipped rather than fatal, so that a batch
    can go on with the others: returns (records, problems), ``problems`` being one cause
    per skipped line ("line 7: ..."). A name or index listed twice keeps its first line.

    Still raises InputError when the file itself is unusable: unreadable, a bad
    sidecar, or lines that are all bad (it is probably no .info at all).
    """
    info_path = Path(info_path)
    try:
        text = info_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(".info file not found", info_path) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not a UTF-8 text file ({e})", info_path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", info_path) from None

    explicit_sidecar = sidecar_path is not None
    sidecar_path = Path(sidecar_path) if explicit_sidecar else sidecar_path_for(info_path)
    sidecar = None
    if explicit_sidecar or sidecar_path.exists():
        sidecar = _load_sidecar(sidecar_path)
    sidecar_entries = {} if sidecar is None else {e["bin_name"]: e for e in sidecar["images"]}
    sidecar_bin_dir = None if sidecar is None else Path(sidecar.get("bin_dir", info_path.parent))

    records, problems, line_of_index, line_of_name = [], [], {}, {}
    for line_number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"line {line_number}"
        try:
            record = _info_record(
                line,
                where,
                info_path,
                check_files,
                sidecar,
                sidecar_path,
                sidecar_entries,
                sidecar_bin_dir,
                line_of_index,
                line_of_name,
            )
        except InputError as e:
            problems.append(e.cause)
            continue
        line_of_index[record.index] = line_number
        line_of_name[record.bin_path.name.casefold()] = line_number
        records.append(record)
    if problems and not records:
        raise InputError(
            problems[0] + (f" (and all {len(problems)} other lines are bad too)" if len(problems) > 1 else ""),
            info_path,
        )
    return records, problems


def _info_record(
    line,
    where,
    info_path,
    check_files,
    sidecar,
    sidecar_path,
    sidecar_entries,
    sidecar_bin_dir,
    line_of_index,
    line_of_name,
):
    """One .info line -> InfoRecord; raises InputError(cause starting with ``where``)."""
    index, listed_path, width, height = _parse_info_line(line, where, info_path)
    bin_name = Path(listed_path).name
    if index in line_of_index:
        raise InputError(f"{where}: index {index} already used on line {line_of_index[index]}", info_path)
    if bin_name.casefold() in line_of_name:
        raise InputError(
            f"{where}: {bin_name} is listed twice (also on line {line_of_name[bin_name.casefold()]})", info_path
        )

    bin_path = _resolve_bin(listed_path, info_path, sidecar_bin_dir, check_files, where)
    name = bin_name[:-4] if bin_name.lower().endswith(".bin") else Path(bin_name).stem
    extra = {}
    if sidecar is not None:
        entry = sidecar_entries.get(bin_name)
        if entry is None:
            raise InputError(
                f"{where}: {bin_name} is not in the sidecar {sidecar_path} "
                "(outputs of different runs? rerun preprocess)",
                info_path,
            )
        if (entry["width"], entry["height"]) != (width, height):
            raise InputError(
                f"{where}: size {width}x{height} disagrees with the sidecar's "
                f"{entry['width']}x{entry['height']} for {bin_name} (rerun preprocess)",
                info_path,
            )
        canvas_side = entry.get(CANVAS_SIDE_KEY, sidecar[CANVAS_SIDE_KEY])
        extra = {
            "file_name": entry["file_name"],
            "resized_width": int(entry["resized_width"]),
            "resized_height": int(entry["resized_height"]),
            "scale": float(entry["scale"]),
            "canvas_side": None if canvas_side is None else int(canvas_side),
            "mean": tuple(entry.get("mean", sidecar["mean"])),
            "std": tuple(entry.get("std", sidecar["std"])),
            "resize": sidecar_policy(sidecar),
        }
        if entry.get("canvas_height"):
            extra.update(canvas_width=int(entry["canvas_width"]), canvas_height=int(entry["canvas_height"]))
    return InfoRecord(index, bin_path, width, height, name, **extra)


def _parse_info_line(line, where, info_path):
    """'index bin_path width height' -> (int, str, int, int); the path may hold spaces."""
    first_and_rest = line.strip().split(None, 1)
    fields = first_and_rest[:1] + (first_and_rest[1].rsplit(None, 2) if len(first_and_rest) > 1 else [])
    if len(fields) != 4:
        raise InputError(f"{where}: expected 'index bin_path width height', got {line.strip()!r}", info_path)
    index_text, listed_path, width_text, height_text = fields
    try:
        index, width, height = int(index_text), int(width_text), int(height_text)
    except ValueError:
        raise InputError(
            f"{where}: index, width and height must be integers, got {line.strip()!r}", info_path
        ) from None
    if index < 0 or width <= 0 or height <= 0:
        raise InputError(f"{where}: index must be >= 0 and width, height > 0, got {line.strip()!r}", info_path)
    return index, listed_path, width, height


def _resolve_bin(listed_path, info_path, sidecar_bin_dir, check_files, where):
    listed = Path(listed_path)
    if listed.is_absolute():
        candidates = [listed]
    else:
        candidates = [listed, info_path.parent / listed]
        if sidecar_bin_dir is not None:
            candidates.append(sidecar_bin_dir / listed.name)
        candidates.append(info_path.parent / listed.name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if check_files:
        looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
        raise InputError(f"{where}: listed file {listed_path} not found (looked for {looked})", info_path)
    return candidates[0]


def _load_sidecar(sidecar_path):
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("sidecar file not found", sidecar_path) from None
    except (OSError, ValueError) as e:
        raise InputError(f"not a readable JSON sidecar ({e})", sidecar_path) from None
    required = (CANVAS_SIDE_KEY, "mean", "std", "images")
    if not isinstance(sidecar, dict) or any(k not in sidecar for k in required):
        raise InputError(f"not a preprocess sidecar: needs the keys {', '.join(required)}", sidecar_path)
    entry_keys = ("file_name", "bin_name", "width", "height", "resized_width", "resized_height", "scale")
    for position, entry in enumerate(sidecar["images"]):
        if not isinstance(entry, dict) or any(k not in entry for k in entry_keys):
            raise InputError(f"images[{position}] needs the keys {', '.join(entry_keys)}", sidecar_path)
    return sidecar


def read_bin(path, canvas=SEED_CANVAS_SIDE):
    """Read one input .bin as float32 [1, 3, S, S] (``canvas`` the seed's side S) or [1, 3, H, W]
    (``canvas`` = (H, W)), checking its byte size first (InputError naming the file, expected
    and actual bytes)."""
    path = Path(path)
    h, w = (canvas, canvas) if isinstance(canvas, int) else (int(v) for v in canvas)
    expected = bin_nbytes((h, w))
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise InputError(".bin file not found", path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path) from None
    if actual != expected:
        raise InputError(
            f"expected {expected} bytes (float32 [1, 3, {h}, {w}]), found {actual} bytes",
            path,
        )
    try:
        data = np.fromfile(path, dtype=BIN_DTYPE)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path) from None
    return data.astype(np.float32, copy=False).reshape(1, 3, h, w)
