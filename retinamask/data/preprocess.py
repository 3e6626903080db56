"""Images -> seed-compatible input files: one raw float32 ``.bin`` per image, a
``.info`` list and a JSON sidecar; and readers for them.

The resize policy (``retinamask.core.geometry``; ``resize``) decides each image's canvas: the
seed's S x S square (default, described below), or the ``original`` / ``buckets``
canvases, whose .bin files are float32 [1, 3, H, W] with H, W per image: the sidecar's
``canvas_width`` / ``canvas_height`` say which (the .info line format is the same).

Outputs of :func:`preprocess_images` (``S`` = input_size, 1344 by default):

``{bin_dir}/{stem}.bin``
    The seed's byte layout: raw little-endian float32, NCHW [1, 3, S, S]
    (S*S*3*4 bytes), BGR minus PIXEL_MEAN, std 1, the image resized so its long
    side is S (see ``transforms.seed_resize_geometry``) and zero-padded
    bottom/right. ``stem`` is the image file name without its last extension
    (``a.b.jpg`` -> ``a.b.bin``).
``{info}``
    One line per image that succeeded, sorted by image file name:
    ``index bin_path width height``; index from 0; ``bin_path`` is ``bin_dir``
    (as given) joined with the .bin name; width/height are the ORIGINAL image size
    (the seed wrote the input size there). Paths may contain spaces: the first
    field is the index and the last two are the size, everything between is the path.
``{info}.json`` (the sidecar)
    Settings (input_size, mean, std, tensor layout, folders) and, per image,
    ``index, file_name, bin_name, width, height, resized_width, resized_height,
    scale, input_size, mean, std`` (``scale`` = S / max(width, height): divide
    boxes by it), plus the failed images and their causes.

Every file is written atomically, so a ``.bin`` that exists with the right byte
size is complete: a rerun skips it (unless its image is newer, or the sidecar
of an earlier run says other settings were used).
"""

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinamask.core import parallel
from retinamask.core.errors import InputError, OutputError
from retinamask.core.fileio import atomic_open, atomic_write_json, atomic_write_text, remove_stale_temp_files
from retinamask.core.geometry import SeedResize
from retinamask.data.transforms import PIXEL_MEAN, PIXEL_STD, SEED_INPUT_SIZE, policy_preprocess
from retinamask.formats.images import IMAGE_EXTENSIONS, list_images, load_image_rgb

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = "retinamask.preprocess/1"
BIN_DTYPE = np.dtype("<f4")


def bin_nbytes(input_size):
    """Byte size of one input .bin: float32 [1, 3, S, S] (``input_size`` S, or a canvas (H, W))."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    return 3 * int(h) * int(w) * BIN_DTYPE.itemsize


def sidecar_path_for(info_path):
    """The sidecar JSON beside an .info file: ``<info>.json``."""
    info_path = Path(info_path)
    return info_path.with_name(info_path.name + ".json")


def default_workers():
    """min(4, CPUs this process may use)."""
    return parallel.default_workers(limit=4)


# ---------------------------------------------------------------------------
# writing


def preprocess_images(
    image_dir,
    bin_dir,
    info_path,
    input_size=SEED_INPUT_SIZE,
    workers=None,
    strict=False,
    mean=PIXEL_MEAN,
    std=PIXEL_STD,
    progress=None,
    resize=None,
):
    """Preprocess every image in ``image_dir`` (see the module docstring for outputs).

    ``resize``: a :class:`~retinamask.core.geometry.ResizePolicy` (None: the seed policy with canvas
    ``input_size``).

    ``workers``: processes (None: :func:`default_workers`; 1: in this process).
    ``strict``: stop at the first bad image by raising its InputError (bins already
    written stay, the .info is not written); otherwise bad images are logged one
    line each, skipped and listed in the summary. ``progress``: tqdm bar (None:
    only on a terminal).

    Returns a summary dict: ``total`` (images found), ``written`` (new .bin files),
    ``resumed`` (existing complete .bin files kept), ``failed`` (list of
    ``{"file", "cause"}``), ``info_path``, ``sidecar_path``, ``bin_dir``,
    ``input_size``, ``records`` (the sidecar's per-image entries).
    Raises InputError for problems that stop everything: no images, bad settings,
    unwritable outputs.
    """
    if resize is None or isinstance(resize, SeedResize):
        input_size = _positive_int(resize.size if resize is not None else input_size, "input_size")
        policy = SeedResize(input_size)
    else:
        policy, input_size = resize, None
    workers = default_workers() if workers is None else _positive_int(workers, "workers")
    mean = tuple(float(m) for m in mean)
    std = tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
        raise InputError(f"mean and std need 3 values each and std no zero, got mean={mean} std={std}")
    bin_dir_as_given = str(bin_dir)
    bin_dir, info_path = Path(bin_dir), Path(info_path)
    sidecar_path = sidecar_path_for(info_path)

    images = list_images(image_dir)
    if not images:
        raise InputError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) found", image_dir)
    try:
        bin_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output folder: {e.strerror or e}", bin_dir) from None
    remove_stale_temp_files(bin_dir)  # 21.7 MB each at S = 1344 when a run was killed mid-write

    allow_resume = _earlier_settings_match(sidecar_path, input_size, mean, std, policy)
    tasks, failed = [], []
    for image_path, problem in _plan_bin_names(images):
        if problem is not None:
            if strict:
                raise InputError(problem, image_path)
            logger.warning("%s: %s", image_path, problem)
            failed.append({"file": str(image_path), "cause": problem})
            continue
        bin_path = bin_dir / (image_path.stem + ".bin")
        tasks.append((str(image_path), str(bin_path), policy, mean, std, allow_resume))

    records, written, resumed = [], 0, 0
    for outcome in _run_tasks(tasks, workers, progress):
        status = outcome[0]
        if status == "output_error":
            raise OutputError(outcome[2], outcome[1])
        if status == "failed":
            _, image_path, cause = outcome
            if strict:
                raise InputError(cause, image_path)
            logger.warning("%s: %s", image_path, cause)
            failed.append({"file": image_path, "cause": cause})
            continue
        _, record, was_resumed = outcome
        resumed += was_resumed
        written += not was_resumed
        records.append(record)

    for index, record in enumerate(records):
        record["index"] = index
    failed.sort(key=lambda f: Path(f["file"]).name)
    _warn_about_unlisted_bins(bin_dir, {r["bin_name"] for r in records})

    sidecar = {
        "format": SIDECAR_FORMAT,
        "input_size": input_size,
        "mean": list(mean),
        "std": list(std),
        "tensor": {
            "shape": [1, 3, input_size, input_size] if input_size else [1, 3, "canvas_height", "canvas_width"],
            "dtype": "float32",
            "byte_order": "little",
            "layout": "NCHW",
            "channel_order": "BGR",
        },
        "resize": "PIL bilinear; long side = input_size, short side = floor(short * input_size / long); "
        "zero padding bottom/right after normalisation; scale = input_size / long side",
        "image_dir": str(Path(image_dir).resolve()),
        "bin_dir": str(bin_dir.resolve()),
        "images": records,
        "failed": [{"file_name": Path(f["file"]).name, "cause": f["cause"]} for f in failed],
    }
    if input_size is None:  # the seed policy's sidecar stays as it always was
        sidecar["resize"] = policy.to_dict()
        sidecar["resize_rule"] = (
            f"{policy.describe()}; PIL bilinear; zero padding bottom/right to each image's "
            "canvas_height x canvas_width after normalisation; boxes map back per axis: "
            "x * width / resized_width, y * height / resized_height"
        )
    info_lines = [
        f"{r['index']} {os.path.join(bin_dir_as_given, r['bin_name'])} {r['width']} {r['height']}\n" for r in records
    ]
    atomic_write_json(sidecar_path, sidecar)
    atomic_write_text(info_path, "".join(info_lines))

    return {
        "total": len(images),
        "written": written,
        "resumed": resumed,
        "failed": failed,
        "info_path": str(info_path),
        "sidecar_path": str(sidecar_path),
        "bin_dir": str(bin_dir),
        "input_size": input_size,
        "records": records,
    }


def _positive_int(value, name):
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number != value or number <= 0:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return number


def _plan_bin_names(images):
    """Yield (image_path, problem or None) in order. Two images whose .bin names
    differ only by letter case would overwrite each other on case-insensitive file
    systems, so only the first one of such a group gets its name."""
    owner_by_key = {}
    for image_path in images:
        name = image_path.stem + ".bin"
        if "\n" in name or "\r" in name:
            yield image_path, "file name contains a line break, which the .info format cannot hold"
            continue
        key = name.casefold()
        if key in owner_by_key:
            yield (
                image_path,
                (
                    f"its output {name} would be the same file as that of {owner_by_key[key].name} "
                    "(same name without extension); rename one of them"
                ),
            )
            continue
        owner_by_key[key] = image_path
        yield image_path, None


def _earlier_settings_match(sidecar_path, input_size, mean, std, policy=None):
    """True when existing .bin files may be kept: there is no earlier sidecar, or it
    records the same input_size (resize policy), mean and std."""
    if not sidecar_path.exists():
        return True
    try:
        earlier = json.loads(sidecar_path.read_text(encoding="utf-8"))
        same = (
            earlier["input_size"] == input_size
            and (policy is None or _sidecar_policy(earlier) in (None, policy.to_dict()))
            and tuple(earlier["mean"]) == mean
            and tuple(earlier["std"]) == std
        )
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("%s: unreadable earlier sidecar; every image is redone", sidecar_path)
        return False
    if not same:
        logger.info("%s: earlier run used other settings; every image is redone", sidecar_path)
    return same


def _sidecar_policy(sidecar):
    """The resize policy dict a sidecar records (None for the seed's sidecars, which say input_size)."""
    policy = sidecar.get("resize")
    return policy if isinstance(policy, dict) else None


def _run_tasks(tasks, workers, progress):
    """Yield the outcome of each task, in task order, with a progress bar."""
    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    workers = min(workers, len(tasks))
    with (
        logging_redirect_tqdm(),
        tqdm(
            total=len(tasks),
            desc="preprocess",
            unit="img",
            disable=(None if progress is None else not progress),
            file=sys.stderr,
        ) as bar,
    ):
        if workers <= 1:
            for task in tasks:
                yield _process_one(task)
                bar.update()
            return
        with parallel.worker_pool(workers) as executor:
            try:
                futures = [executor.submit(_process_one, task) for task in tasks]
                for task, future in zip(tasks, futures):
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        raise InputError(
                            "a worker process died (killed for lack of memory, or crashed in an image decoder) "
                            "while this image or one near it was being processed; finished .bin files are kept "
                            "and a rerun resumes; --workers 1 pinpoints the image",
                            task[0],
                        ) from None
                    yield outcome
                    bar.update()
            finally:
                executor.shutdown(wait=True, cancel_futures=True)


def _process_one(task):
    """One image -> its .bin. Runs in a worker process.

    Returns ("ok", record, resumed), ("failed", image_path, cause) for a bad image,
    or ("output_error", path, cause) when the output cannot be written (fatal).
    """
    image_path, bin_path, policy, mean, std, allow_resume = task
    image_path, bin_path = Path(image_path), Path(bin_path)
    try:
        geometry = None
        if allow_resume and bin_path.exists():
            geometry = policy.geometry(*_stored_size(image_path))
        if geometry is not None and _complete_bin_exists(bin_path, image_path, geometry.canvas_hw):
            resumed = True
        else:
            image = load_image_rgb(image_path)
            tensor, geometry = policy_preprocess(image, policy, mean, std)
            del image
            try:
                with atomic_open(bin_path, "wb") as f:
                    tensor.astype(BIN_DTYPE, copy=False).tofile(f)
            except OutputError as e:
                return ("output_error", str(bin_path), e.cause)
            resumed = False
    except InputError as e:
        return ("failed", str(image_path), e.cause)
    except MemoryError:
        return ("failed", str(image_path), "not enough memory to preprocess this image")
    except Exception as e:  # one odd file must not stop a run over thousands
        return (
            "failed",
            str(image_path),
            f"cannot preprocess (unexpected {type(e).__name__}: {' '.join(str(e).split())[:200]})",
        )
    (height, width), resized_hw = geometry.image_hw, geometry.resized_hw
    record = {
        "index": None,
        "file_name": image_path.name,
        "bin_name": bin_path.name,
        "width": int(width),
        "height": int(height),
        "resized_width": int(resized_hw[1]),
        "resized_height": int(resized_hw[0]),
        # the seed's ratio, bit-exact with seed_resize_geometry's
        "scale": policy.size / max(height, width) if isinstance(policy, SeedResize) else geometry.seed_scale,
        "input_size": policy.size if isinstance(policy, SeedResize) else None,
        "mean": list(mean),
        "std": list(std),
    }
    if not isinstance(policy, SeedResize):  # the seed's sidecar stays as it was
        record.update(canvas_width=int(geometry.canvas_hw[1]), canvas_height=int(geometry.canvas_hw[0]))
    return ("ok", record, resumed)


def _complete_bin_exists(bin_path, image_path, input_size):
    try:
        bin_stat = bin_path.stat()
        image_mtime = image_path.stat().st_mtime_ns
    except OSError:
        return False
    return bin_stat.st_size == bin_nbytes(input_size) and bin_stat.st_mtime_ns >= image_mtime


def _stored_size(image_path):
    """(height, width) from the image header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(image_path) as img:
            width, height = img.size
    except Exception as e:
        raise InputError(f"cannot read the image header ({type(e).__name__}: {e})", image_path) from None
    return height, width


def _warn_about_unlisted_bins(bin_dir, listed_names):
    try:
        unlisted = sorted(p.name for p in bin_dir.glob("*.bin") if p.name not in listed_names)
    except OSError:
        return
    if unlisted:
        logger.warning(
            "%s: %d .bin file(s) not from this run's images (e.g. %s); they are not in the .info, "
            "but tools that read the whole folder will see them",
            bin_dir,
            len(unlisted),
            unlisted[0],
        )


# ---------------------------------------------------------------------------
# reading


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
    input_size: int | None = None
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
        return (self.input_size, self.input_size) if self.input_size else None


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
        input_size = entry.get("input_size", sidecar["input_size"])
        extra = {
            "file_name": entry["file_name"],
            "resized_width": int(entry["resized_width"]),
            "resized_height": int(entry["resized_height"]),
            "scale": float(entry["scale"]),
            "input_size": None if input_size is None else int(input_size),
            "mean": tuple(entry.get("mean", sidecar["mean"])),
            "std": tuple(entry.get("std", sidecar["std"])),
            "resize": _sidecar_policy(sidecar),
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
    required = ("input_size", "mean", "std", "images")
    if not isinstance(sidecar, dict) or any(k not in sidecar for k in required):
        raise InputError(f"not a preprocess sidecar: needs the keys {', '.join(required)}", sidecar_path)
    entry_keys = ("file_name", "bin_name", "width", "height", "resized_width", "resized_height", "scale")
    for position, entry in enumerate(sidecar["images"]):
        if not isinstance(entry, dict) or any(k not in entry for k in entry_keys):
            raise InputError(f"images[{position}] needs the keys {', '.join(entry_keys)}", sidecar_path)
    return sidecar


def read_bin(path, input_size=SEED_INPUT_SIZE):
    """Read one input .bin as float32 [1, 3, S, S] (S = input_size; or [1, 3, H, W] for a canvas
    ``input_size`` = (H, W)), checking its byte size first (InputError naming the file, expected
    and actual bytes)."""
    path = Path(path)
    h, w = (input_size, input_size) if isinstance(input_size, int) else (int(v) for v in input_size)
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
