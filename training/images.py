"""Image files, and folders of them as users keep them: ``data.path/<class name>/<image file>``.

Every image is read by one rule or refused by name (a ``DataError`` naming the file, what was
found and what is accepted):

- Pixels are read at their full depth and mapped linearly onto the 0-255 scale of 8-bit images.
  8-bit modes (1, L, P, RGB, CMYK, YCbCr and their alpha variants LA, PA, RGBA) as Pillow gives
  them: 1-bit as 0/255, CMYK and YCbCr through Pillow's conversion to RGB (no colour profile).
  16-bit grey (I;16, I;16B, I;16L, I;16N; and mode I where the file stores 16-bit samples, as
  older Pillow versions open 16-bit PNGs) divided by 257, so 65535 becomes 255. 16-bit colour
  (RGB, RGBA and grey-with-alpha PNGs) Pillow itself decodes to 8 bits, keeping the high byte:
  within one level of value / 257.
- 32-bit integers (mode I) only when every value lies in 0-255 (kept). 32-bit floats (mode F):
  multiplied by 255 when every value of every mode-F image of the folder lies in [0, 1], kept
  when they lie in [0, 255]; values outside [0, 255] or NaN/Inf, and a folder mixing images
  within [0, 1] with images above 1, are refused with the file and the range found. The scale
  is decided over the whole folder, never per image: a per-image rescale would change what a
  value means from one image to the next.
- Transparency (an alpha band, a palette's or a colour key's) is composited over a white
  background; a transparent 16-bit or float image is refused.
- ``data.channels = 1`` reads grey: colour becomes grey by Pillow's ITU-R 601-2 luma
  (L = R * 299/1000 + G * 587/1000 + B * 114/1000); ``3`` reads RGB: grey is repeated in all
  three channels.
- The EXIF orientation is applied first (``PIL.ImageOps.exif_transpose``), then the resize to
  ``data.image_size`` (bilinear).
- Other modes (LAB, HSV, premultiplied La/RGBa, ...) are refused by name.

Image sets are held as uint8 ``[N, C, H, W]`` (a quarter of float32's size until the splits are
cut) when every image is 8-bit exact; a set with any 16-bit or mode-F image is held as float32.

Folders: only image files (``IMAGE_SUFFIXES``) directly inside each class folder are read, in
sorted order of sorted class folders. Hidden files and folders (names starting with ".":
macOS AppleDouble ``._x.png``, ``.DS_Store``, ``.ipynb_checkpoints``) and ``__MACOSX`` are
skipped and counted (one log line, and ``Dataset.preprocessing["skipped_files"]``); other files
are ignored and counted in the log line. An empty class folder, a train/test split layout
(``path/train/<class>/...``) and folders of images inside a class folder are refused, each with
the fix in the message.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from training.config import DataConfig
from training.data import Array, Dataset, DataError, check_arrays, tabular_dataset
from training.user_data import encode_labels

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Composited under transparent pixels: white, the paper of documents and digit scans.
BACKGROUND = 255

_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("LA", "PA", "RGBA")
ACCEPTED_MODES = (*_EIGHT_BIT_MODES, *_SIXTEEN_BIT_MODES, "I", "F")
_ACCEPTED = ("accepted: 8-bit modes 1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr; 16-bit grey I;16 "
             "(read as value / 257); 32-bit integer I with values within 0-255; 32-bit float F "
             "with values within [0, 1] (x 255) or [0, 255]")


def is_hidden(path: Path) -> bool:
    """Names starting with "." (AppleDouble ``._x.png``, ``.DS_Store``, ``.ipynb_checkpoints``)
    and macOS zip archives' ``__MACOSX``: copies and metadata, never the user's images."""
    return path.name.startswith(".") or path.name == "__MACOSX"


@dataclass(frozen=True)
class FolderScan:
    """What lies directly inside one folder, sorted."""

    images: tuple[Path, ...]
    hidden_files: tuple[Path, ...]
    hidden_folders: tuple[Path, ...]
    other_files: tuple[Path, ...]
    folders: tuple[Path, ...]


def scan_folder(folder: Path) -> FolderScan:
    images, hidden_files, hidden_folders, other_files, folders = [], [], [], [], []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            (hidden_folders if is_hidden(entry) else folders).append(entry)
        elif is_hidden(entry):
            hidden_files.append(entry)
        elif entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
            images.append(entry)
        else:
            other_files.append(entry)
    return FolderScan(tuple(images), tuple(hidden_files), tuple(hidden_folders), tuple(other_files),
                      tuple(folders))


def holds_images(folder: Path) -> bool:
    """Whether any image file lies anywhere below ``folder``, outside hidden folders."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_hidden(Path(d))]
        if any(Path(f).suffix.lower() in IMAGE_SUFFIXES and not is_hidden(Path(f))
               for f in filenames):
            return True
    return False


@dataclass
class _Skipped:
    """Files passed over in the folders read, for the log line and the model's metadata."""

    hidden_files: int = 0
    hidden_folders: list[str] = field(default_factory=list)
    other_files: int = 0
    loose_files: int = 0  # beside the class folders, in data.path itself
    other_folders: list[str] = field(default_factory=list)

    def add(self, scan: FolderScan, root: Path) -> None:
        self.hidden_files += len(scan.hidden_files)
        self.hidden_folders += [_shown(p, root) for p in scan.hidden_folders]
        self.other_files += len(scan.other_files)

    def log_line(self, where: str) -> str:
        parts = [f"{self.hidden_files} hidden or AppleDouble files (names starting with '.')"
                 if self.hidden_files else "",
                 f"{len(self.hidden_folders)} hidden folders ({', '.join(self.hidden_folders)})"
                 if self.hidden_folders else "",
                 f"{self.other_files} files that are not images ({', '.join(IMAGE_SUFFIXES)})"
                 if self.other_files else "",
                 f"{self.loose_files} files beside the class folders" if self.loose_files else "",
                 f"{len(self.other_folders)} folders without image files "
                 f"({', '.join(self.other_folders)})" if self.other_folders else ""]
        shown = "; ".join(p for p in parts if p)
        return f"{where}: skipped {shown}" if shown else ""

    def metadata(self) -> dict[str, object]:
        """Only what is there: without hidden files a model's metadata stays as it was."""
        out: dict[str, object] = {}
        if self.hidden_files:
            out["hidden or AppleDouble files"] = self.hidden_files
        if self.hidden_folders:
            out["hidden folders"] = list(self.hidden_folders)
        return out


def _shown(path: Path, root: Path) -> str:
    return (Path(root.name) / path.relative_to(root)).as_posix()


@dataclass(frozen=True)
class _Decoded:
    pixels: np.ndarray  # [C, H, W]: uint8 0-255, or float32 (16-bit and mode F sources)
    mode: str  # the mode's name in the scale note: I;16 for all 16-bit variants
    high: float  # mode F: the largest value, which decides the folder's scale


def _rawmode(img: object) -> str:
    """How the file stores its samples (before decoding): a PNG's 16-bit grey is "I;16B" even
    where an older Pillow opens it as mode I."""
    tile = getattr(img, "tile", None)
    if not tile:
        return ""
    args = tile[0][3] if len(tile[0]) > 3 else None
    if isinstance(args, str):
        return args
    return args[0] if args and isinstance(args[0], str) else ""


def _range_text(values: np.ndarray) -> str:
    return f"values from {values.min():g} to {values.max():g}"


def _decode(file: Path, channels: int, size: tuple[int, ...]) -> _Decoded:
    from PIL import Image, ImageOps

    with Image.open(file) as opened:
        mode = opened.mode
        sixteen = mode in _SIXTEEN_BIT_MODES or (
            mode == "I" and _rawmode(opened) in _SIXTEEN_BIT_MODES)
        transparent = mode in _ALPHA_MODES or "transparency" in opened.info
        if mode not in ACCEPTED_MODES:
            raise DataError(f"{file}: Pillow mode {mode!r} is not read; {_ACCEPTED}; convert it to "
                            "8-bit RGB or grey")
        if transparent and mode not in _EIGHT_BIT_MODES:
            raise DataError(f"{file}: mode {mode!r} with a transparent value is not read "
                            "(transparency is composited only for 8-bit images); save it without "
                            "transparency")
        img = ImageOps.exif_transpose(opened)
        if sixteen or mode in ("I", "F"):
            values = np.asarray(img)
            if sixteen:
                # Full depth, linearly: 65535 -> 255. Pillow's own convert("L") clips at 255.
                grey = (values.astype(np.float64) / 257.0).astype(np.float32)
                return _Decoded(_shaped(grey, channels, size), "I;16", 0.0)
            kind = "32-bit float" if mode == "F" else "32-bit integer"
            if mode == "F" and not np.isfinite(values).all():
                raise DataError(f"{file}: mode 'F' ({kind}) has {int((~np.isfinite(values)).sum())} "
                                f"NaN/Inf values; {_ACCEPTED}")
            if values.size and (values.min() < 0 or values.max() > 255):
                raise DataError(f"{file}: mode {mode!r} ({kind}) {_range_text(values)}; {_ACCEPTED}; "
                                "rescale the images (one scale for all of them) or save them as "
                                "8-bit or 16-bit images")
            if mode == "I":  # integers within 0-255: 8-bit exact
                img = Image.fromarray(values.astype(np.uint8))
            else:
                high = float(values.max()) if values.size else 0.0
                return _Decoded(_shaped(values.astype(np.float32), channels, size), "F", high)
        if transparent:
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (BACKGROUND,) * 4), rgba)
        img = img.convert("L" if channels == 1 else "RGB")
        if size:
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        pixels = np.asarray(img, dtype=np.uint8)  # modes L and RGB: 8 bits a channel
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # [C, H, W]
        return _Decoded(pixels, "I" if mode == "I" else "", 0.0)


def _shaped(grey: np.ndarray, channels: int, size: tuple[int, ...]) -> np.ndarray:
    """One float32 grey band [H, W] -> [channels, H', W'], resized bilinearly in float."""
    from PIL import Image

    if size:
        grey = np.asarray(Image.fromarray(grey).resize((size[1], size[0]), Image.BILINEAR))
    return np.repeat(grey[None], channels, axis=0)


def read_images(files: Sequence[Path], channels: int, image_size: tuple[int, ...], where: str,
                ) -> tuple[np.ndarray, dict[str, str]]:
    """[N, C, H, W] pixel values on the 0-255 scale (the module's rule), and for each source
    mode that is not 8-bit, how its values were mapped (empty for 8-bit images).

    Every file is resized to ``image_size`` or required to share the first file's size.
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise DataError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels}")
    if image_size and len(image_size) != 2:
        raise DataError(f"data.image_size must be [height, width], got {list(image_size)}")
    out: np.ndarray | None = None
    scales: dict[str, str] = {}
    floats: list[tuple[int, Path, float]] = []
    for i, file in enumerate(files):
        try:
            decoded = _decode(file, channels, image_size)
        except DataError:
            raise
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{file}: not an image that can be read: {exc}") from exc
        pixels = decoded.pixels
        if out is None:
            out = np.empty((len(files), *pixels.shape), dtype=pixels.dtype)
        elif pixels.shape != out.shape[1:]:
            raise DataError(f"{file}: {pixels.shape[2]}x{pixels.shape[1]} pixels, the first image of "
                            f"{where} has {out.shape[3]}x{out.shape[2]}; set data.image_size = "
                            "[height, width] to resize them all")
        if pixels.dtype != out.dtype:  # the first 16-bit or float image: the set becomes float32
            out = out.astype(np.float32)
        out[i] = pixels
        if decoded.mode == "I;16":
            scales["I;16"] = "value / 257 (16-bit 0-65535 onto 0-255)"
        elif decoded.mode == "I":
            scales["I"] = "value (32-bit integers, every value within 0-255)"
        elif decoded.mode == "F":
            floats.append((i, file, decoded.high))
    if out is None:
        raise DataError(f"{where}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    if floats:
        scales["F"] = _float_scale(out, floats, where)
    return out, scales


def _float_scale(out: np.ndarray, floats: list[tuple[int, Path, float]], where: str) -> str:
    """Mode-F images: one scale for the folder, from all their values (within [0, 255])."""
    if all(high <= 1.0 for _, _, high in floats):
        rows = [i for i, _, _ in floats]
        out[rows] *= 255.0
        return "value x 255 (32-bit floats, every value within [0, 1])"
    unit = [(file, high) for _, file, high in floats if 0.0 < high <= 1.0]
    if unit:
        wide = max(floats, key=lambda f: f[2])
        raise DataError(f"{where}: mode 'F' (32-bit float) images on two scales: {unit[0][0]} has "
                        f"values within [0, 1] (largest {unit[0][1]:g}; {len(unit)} such images), "
                        f"{wide[1]} up to {wide[2]:g}; one scale must fit them all: every value "
                        "within [0, 1] (read x 255) or within [0, 255] (read as it is)")
    return "value (32-bit floats, values within [0, 255])"


def read_image(file: Path, channels: int = 3, image_size: tuple[int, ...] = ()) -> np.ndarray:
    """One image file as [C, H, W] on the 0-255 scale, by the module's rule (a mode-F file is a
    folder of one: values within [0, 1] are multiplied by 255)."""
    return read_images([Path(file)], channels, image_size, str(file))[0][0]


def _class_folders(root: Path, skipped: _Skipped) -> list[tuple[Path, tuple[Path, ...]]]:
    """The class folders and their image files; every layout this cannot read is refused."""
    top = scan_folder(root)
    skipped.hidden_files += len(top.hidden_files)
    skipped.hidden_folders += [_shown(p, root) for p in top.hidden_folders]
    skipped.loose_files += len(top.other_files) + len(top.images)
    found: list[tuple[Path, tuple[Path, ...]]] = []
    nested: dict[Path, list[Path]] = {}  # class folder -> its sub-folders holding images
    empty: list[tuple[Path, FolderScan]] = []
    for folder in top.folders:
        scan = scan_folder(folder)
        skipped.add(scan, root)
        inner = [sub for sub in scan.folders if holds_images(sub)]
        skipped.other_folders += [_shown(sub, root) for sub in scan.folders if sub not in inner]
        if inner:
            nested[folder] = inner
        if scan.images:
            found.append((folder, scan.images))
        elif not inner:
            empty.append((folder, scan))
    if nested:
        raise DataError(_nested_message(root, nested, {f for f, _ in found}))
    if empty:
        folder, scan = empty[0]
        others = len(scan.other_files) + len(scan.hidden_files)
        also = ", ".join(f.name for f, _ in empty)
        raise DataError(f"{folder}: class folder holds no image files ({', '.join(IMAGE_SUFFIXES)}, "
                        "directly inside it)" + (f"; found {others} other files" if others else "")
                        + (f" ({len(empty)} such class folders: {also})" if len(empty) > 1 else "")
                        + "; add its images or remove the folder")
    return found


def _nested_message(root: Path, nested: dict[Path, list[Path]], with_images: set[Path]) -> str:
    only_folders = [f for f in nested if f not in with_images]
    if only_folders and not with_images:
        # path/train/<class>/..., path/test/<class>/...: every top folder is a split, not a class.
        train = next((f for f in only_folders if f.name.lower() in ("train", "training")),
                     only_folders[0])
        rest = ", ".join(str(f) for f in only_folders if f != train)
        return (f"{root}: {', '.join(f.name for f in only_folders)} hold class folders of their "
                f"own ({train.name}: {', '.join(s.name for s in nested[train])}) rather than image "
                f"files: a train/test split layout. Point data.path at {train}; the calibration and "
                "test rows are cut from it (data.test_fraction)"
                + (f". A separate test folder is not read: to use the images of {rest}, add them "
                   f"to the class folders of {train}" if rest else ""))
    folder = next(iter(nested))
    subs = ", ".join(s.name for s in nested[folder])
    what = ("both image files and folders of images" if folder in with_images
            else "folders of images")
    return (f"{folder}: class folder holds {what} ({subs}); only image files directly inside a "
            f"class folder are read ({root}/<class name>/<image file>): move those images up into "
            f"{folder}, or out of the folder")


def _ood_files(path: Path, skipped: _Skipped) -> tuple[Path, ...]:
    if not path.is_dir():
        raise DataError(f"data.ood_path {path} is not a folder of image files")
    scan = scan_folder(path)
    skipped.add(scan, path)
    inner = [sub for sub in scan.folders if holds_images(sub)]
    if inner:
        names = ", ".join(s.name for s in inner)
        raise DataError(f"data.ood_path {path}: holds folders of images ({names}); only image files "
                        "directly inside it are read: point data.ood_path at a folder of image "
                        "files, or move the images up into it")
    skipped.other_folders += [_shown(sub, path) for sub in scan.folders]
    return scan.images


def load_image_folder(config: DataConfig) -> Dataset:
    """Images as users keep them: ``path/<class name>/<image files>``, with an optional
    ``ood_path`` folder of image files (no class folders)."""
    root = Path(config.path)
    if not root.is_dir():
        raise DataError(f"data.path {root} is not a folder of class sub-folders")
    skipped = _Skipped()
    found = _class_folders(root, skipped)
    if line := skipped.log_line(str(root)):
        log.info(line)
    if len(found) < 2:
        raise DataError(f"{root}: expected at least 2 class sub-folders holding image files, found "
                        f"{len(found)}")
    files = [file for _, images in found for file in images]
    labels = [folder.name for folder, images in found for _ in images]
    X, scales = read_images(files, config.channels, config.image_size, str(root))
    task, y, names = encode_labels(np.array(labels), config.task or "classification", str(root))
    X, y = check_arrays(X, y, task, str(root))
    ood: dict[str, Array] = {}
    if config.ood_path:
        ood_root = Path(config.ood_path)
        ood_skipped = _Skipped()
        X_ood, ood_scales = read_images(_ood_files(ood_root, ood_skipped), config.channels,
                                        config.image_size, config.ood_path)
        if X_ood.shape[1:] != X.shape[1:]:
            raise DataError(f"{config.ood_path}: images of shape {list(X_ood.shape[1:])}, expected "
                            f"{list(X.shape[1:])} like the training images")
        if line := ood_skipped.log_line(config.ood_path):
            log.info(line)
        if "F" in scales and "F" in ood_scales and scales["F"] != ood_scales["F"]:
            raise DataError(f"{config.ood_path}: mode 'F' (32-bit float) images read as "
                            f"{ood_scales['F']}, the training images as {scales['F']}; both folders "
                            "must be on one scale")
        skipped.hidden_files += ood_skipped.hidden_files
        skipped.hidden_folders += ood_skipped.hidden_folders
        scales.update({mode: scale for mode, scale in ood_scales.items() if mode not in scales})
        ood = {ood_root.name + "_ood": X_ood.astype(np.float32)}
    data = tabular_dataset(root.name, X, y, task, config, names, ood)
    preprocessing: dict[str, object] = {"input": f"image [{X.shape[1]}, {X.shape[2]}, {X.shape[3]}] "
                                                 "(channels, height, width), pixel values 0-255"}
    if scales:
        preprocessing["pixel_scale"] = scales
    if meta := skipped.metadata():
        preprocessing["skipped_files"] = meta
    return replace(data, preprocessing=preprocessing)

