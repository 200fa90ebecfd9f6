"""Image files read by one rule or refused by name, and image folders read as users keep them.

Expected pixel values are computed here from the arrays written (numpy), never by the reader's
own code path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.config import DataConfig
from training.data import Dataset, DataError
from training.datasets import load_dataset
from training.images import read_image

RNG_SEED = 0


def _rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


def _over_white(value: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Compositing over white, in exact arithmetic."""
    value, alpha = value.astype(np.float64), alpha.astype(np.float64)
    return (value * alpha + 255.0 * (255.0 - alpha)) / 255.0


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2, in exact arithmetic: [H, W, 3] -> [H, W]."""
    rgb = rgb.astype(np.float64)
    return rgb[..., 0] * 299 / 1000 + rgb[..., 1] * 587 / 1000 + rgb[..., 2] * 114 / 1000


def _chw(hwc: np.ndarray) -> np.ndarray:
    return hwc.transpose(2, 0, 1)


# --- 8-bit modes -------------------------------------------------------------------------------


def test_rgb_and_grey_read_as_written_in_either_channel_count(tmp_path: Path) -> None:
    rgb = _rng().integers(0, 256, (6, 9, 3)).astype(np.uint8)
    grey = rgb[..., 1].copy()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(grey).save(tmp_path / "grey.png")
    got = read_image(tmp_path / "rgb.png")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, _chw(rgb))
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png", channels=1), grey[None])
    # Grey -> RGB repeats the channel; RGB -> grey is the 601-2 luma, rounded.
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png", channels=3), np.stack([grey] * 3))
    luma = read_image(tmp_path / "rgb.png", channels=1)[0].astype(np.float64)
    assert np.abs(luma - _luma(rgb)).max() <= 0.5 + 1e-9


def test_one_bit_images_read_as_0_and_255(tmp_path: Path) -> None:
    bits = _rng().integers(0, 2, (5, 7)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    np.testing.assert_array_equal(read_image(tmp_path / "bits.png", channels=1)[0], np.where(bits, 255, 0))


def _palette_image(indices: np.ndarray, palette: np.ndarray) -> Image.Image:
    img = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.astype(np.uint8).tobytes())
    img.putpalette(palette.astype(np.uint8).tobytes())
    return img


def test_palette_images_read_through_their_palette_and_transparency_over_white(tmp_path: Path) -> None:
    rng = _rng()
    palette = rng.integers(0, 256, (4, 3))
    indices = rng.integers(0, 4, (6, 8))
    indices[0, 0] = 2
    _palette_image(indices, palette).save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), _chw(palette[indices]))
    # Index 2 transparent (a tRNS chunk): white there, the palette colour elsewhere.
    _palette_image(indices, palette).save(tmp_path / "pt.png", transparency=2)
    assert Image.open(tmp_path / "pt.png").mode == "P"
    expected = np.where((indices == 2)[..., None], 255, palette[indices])
    np.testing.assert_array_equal(read_image(tmp_path / "pt.png"), _chw(expected))


def test_rgba_black_where_transparent_reads_as_white_background(tmp_path: Path) -> None:
    rng = _rng()
    rgb = rng.integers(0, 256, (6, 8, 3))
    alpha = rng.integers(0, 256, (6, 8))
    alpha[:, :3] = 0
    alpha[:, 3:5] = 255
    rgb[alpha == 0] = 0  # black under full transparency, as many tools save it
    Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8)).save(tmp_path / "rgba.png")
    got = read_image(tmp_path / "rgba.png").astype(np.float64)
    expected = _chw(_over_white(rgb, alpha[..., None]))
    assert np.all(got[:, :, :3] == 255)
    np.testing.assert_array_equal(got[:, :, 3:5], _chw(rgb)[:, :, 3:5])
    assert np.abs(got - expected).max() <= 0.5 + 1e-9


def test_grey_with_alpha_and_palette_with_alpha_over_white(tmp_path: Path) -> None:
    rng = _rng()
    grey = rng.integers(0, 256, (6, 8))
    alpha = rng.integers(0, 256, (6, 8))
    alpha[0] = 0
    Image.frombytes("LA", (8, 6), np.dstack([grey, alpha]).astype(np.uint8).tobytes()).save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    got = read_image(tmp_path / "la.png", channels=1)[0].astype(np.float64)
    assert np.all(got[0] == 255)
    assert np.abs(got - _over_white(grey, alpha)).max() <= 0.5 + 1e-9

    palette = rng.integers(0, 256, (4, 3))
    indices = rng.integers(0, 4, (6, 8))
    pa = _palette_image(indices, palette).convert("PA")
    pa.putalpha(Image.frombytes("L", (8, 6), alpha.astype(np.uint8).tobytes()))
    pa.save(tmp_path / "pa.tif")
    assert Image.open(tmp_path / "pa.tif").mode == "PA"
    got = read_image(tmp_path / "pa.tif").astype(np.float64)
    assert np.abs(got - _chw(_over_white(palette[indices], alpha[..., None]))).max() <= 0.5 + 1e-9


def test_colour_key_transparency_of_grey_and_rgb_over_white(tmp_path: Path) -> None:
    grey = _rng().integers(1, 256, (5, 6)).astype(np.uint8)
    grey[2] = 0
    Image.fromarray(grey).save(tmp_path / "l.png", transparency=0)
    np.testing.assert_array_equal(read_image(tmp_path / "l.png", channels=1)[0], np.where(grey == 0, 255, grey))
    rgb = np.dstack([grey] * 3)
    Image.fromarray(rgb).save(tmp_path / "rgb.png", transparency=(0, 0, 0))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), _chw(np.where(rgb == 0, 255, rgb)))


def test_cmyk_and_ycbcr_tiffs_read_as_rgb(tmp_path: Path) -> None:
    rng = _rng()
    cmyk = rng.integers(0, 256, (4, 6, 4))
    cmyk[0, :, 3] = 0  # no black: R = 255 - C
    cmyk[1, :, 3] = 255  # full black: 0
    Image.frombytes("CMYK", (6, 4), cmyk.astype(np.uint8).tobytes()).save(tmp_path / "cmyk.tif")
    got = read_image(tmp_path / "cmyk.tif").transpose(1, 2, 0).astype(np.float64)
    np.testing.assert_array_equal(got[0], 255 - cmyk[0, :, :3])
    np.testing.assert_array_equal(got[1], 0)
    subtractive = (255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:]) / 255.0
    assert np.abs(got - subtractive).max() <= 0.5 + 1e-9

    rgb = rng.integers(0, 256, (4, 6, 3)).astype(np.uint8)
    Image.fromarray(rgb).convert("YCbCr").save(tmp_path / "ycc.tif")
    assert Image.open(tmp_path / "ycc.tif").mode == "YCbCr"
    # YCbCr of 8-bit RGB rounds; back to RGB lands within a few levels of the original.
    assert np.abs(read_image(tmp_path / "ycc.tif").astype(int) - _chw(rgb).astype(int)).max() <= 3


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = (np.arange(12).reshape(3, 4) * 20).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "turned.png", exif=exif)
    np.testing.assert_array_equal(read_image(tmp_path / "turned.png", channels=1)[0], np.rot90(pixels, k=-1))


def test_other_modes_are_refused_by_name(tmp_path: Path) -> None:
    Image.frombytes("LAB", (4, 3), bytes(range(36))).save(tmp_path / "lab.tif")
    with pytest.raises(DataError, match=r"lab.tif: Pillow mode 'LAB' is not read; accepted: 8-bit modes"):
        read_image(tmp_path / "lab.tif")


# --- 16-bit, 32-bit integer and float --------------------------------------------------------


def _sixteen() -> np.ndarray:
    values = _rng().integers(0, 65536, (5, 7)).astype(np.uint16)
    values[0, :4] = (0, 257, 32896, 65535)  # 0, 1, 128 and 255 exactly
    return values


def test_sixteen_bit_grey_is_read_at_full_depth_divided_by_257(tmp_path: Path) -> None:
    values = _sixteen()
    Image.fromarray(values).save(tmp_path / "g16.png")
    Image.fromarray(values).save(tmp_path / "g16l.tif")
    Image.frombytes("I;16B", (7, 5), values.astype(">u2").tobytes()).save(tmp_path / "g16b.tif")
    expected = (values / 257.0).astype(np.float32)
    for name, mode in (("g16.png", "I;16"), ("g16l.tif", "I;16"), ("g16b.tif", "I;16B")):
        assert Image.open(tmp_path / name).mode == mode
        # The independent decoding: numpy reads the file's own 16-bit values.
        raw = np.array(Image.open(tmp_path / name)).astype(np.float64)
        np.testing.assert_array_equal(raw, values)
        got = read_image(tmp_path / name, channels=1)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got[0], expected)
        np.testing.assert_array_equal(got[0, 0, :4], [0.0, 1.0, 128.0, 255.0])
        np.testing.assert_array_equal(read_image(tmp_path / name), np.stack([expected] * 3))


def test_sixteen_bit_png_opened_as_mode_i_by_older_pillow_is_still_16_bit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import PngImagePlugin

    values = _sixteen()
    Image.fromarray(values).save(tmp_path / "g16.png")
    monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))  # as Pillow 10 opens it
    assert Image.open(tmp_path / "g16.png").mode == "I"
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png", channels=1)[0],
                                  (values / 257.0).astype(np.float32))


def test_sixteen_bit_resized_stays_on_the_0_255_scale(tmp_path: Path) -> None:
    Image.fromarray(np.full((6, 10), 51400, np.uint16)).save(tmp_path / "flat.png")
    got = read_image(tmp_path / "flat.png", channels=1, image_size=(3, 5))
    assert got.shape == (1, 3, 5)
    np.testing.assert_allclose(got, 51400 / 257, rtol=1e-6)


def test_transparent_sixteen_bit_is_refused(tmp_path: Path) -> None:
    Image.fromarray(_sixteen()).save(tmp_path / "t16.png", transparency=257)
    with pytest.raises(DataError, match=r"t16.png: mode 'I;16' with a transparent value is not read"):
        read_image(tmp_path / "t16.png")


def test_32_bit_integers_within_0_255_are_kept_and_others_refused(tmp_path: Path) -> None:
    values = _rng().integers(0, 256, (4, 5)).astype(np.int32)
    Image.fromarray(values).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    got = read_image(tmp_path / "i.tif", channels=1)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got[0], values)
    values[1, 1] = 4000
    Image.fromarray(values).save(tmp_path / "wide.tif")
    with pytest.raises(DataError, match=r"wide.tif: mode 'I' \(32-bit integer\) values from \d+ to 4000; "
                                        r"accepted: .* I with values within 0-255"):
        read_image(tmp_path / "wide.tif")


def test_floats_within_0_1_are_scaled_by_255_and_within_0_255_kept(tmp_path: Path) -> None:
    unit = _rng().random((4, 5)).astype(np.float32)
    unit[0, 0] = 1.0
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    assert Image.open(tmp_path / "unit.tif").mode == "F"
    got = read_image(tmp_path / "unit.tif", channels=1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[0], unit.astype(np.float64) * 255, rtol=1e-6)
    wide = unit * 200 + 1.5
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "wide.tif", channels=1)[0], wide)


@pytest.mark.parametrize(("value", "shown"), [(300.0, "to 300"), (-2.0, "from -2"), (np.nan, "NaN/Inf")])
def test_floats_outside_0_255_are_refused_with_the_range(tmp_path: Path, value: float, shown: str) -> None:
    values = np.full((3, 4), 0.5, np.float32)
    values[1, 2] = value
    Image.fromarray(values).save(tmp_path / "bad.tif")
    with pytest.raises(DataError, match=rf"bad.tif: mode 'F' \(32-bit float\).*{shown}"):
        read_image(tmp_path / "bad.tif")


# --- folders -----------------------------------------------------------------------------------


def _classes(root: Path, write, n: int = 12, classes: tuple[str, ...] = ("a", "b")) -> dict[bytes, str]:
    """``n`` images per class written by ``write(path, index) -> expected [C, H, W]``; returns
    the expected rows (float32 bytes) -> class name, to find each split row's source."""
    expected = {}
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = write(root / name / f"{i:03d}", 1000 * c + i)
            expected[pixels.astype(np.float32).tobytes()] = name
    return expected


def _rows_match(data: Dataset, expected: dict[bytes, str]) -> None:
    seen = 0
    for split in (data.train, data.calibration, data.test):
        for row, label in zip(split.X, split.y):
            assert data.class_labels[int(label)] == expected[row.astype(np.float32).tobytes()]
            seen += 1
    assert seen == len(expected)


def test_a_folder_of_16_bit_pngs_is_read_on_the_0_255_scale(tmp_path: Path) -> None:
    def write(path: Path, seed: int) -> np.ndarray:
        values = np.random.default_rng(seed).integers(0, 65536, (6, 5)).astype(np.uint16)
        Image.fromarray(values).save(path.with_suffix(".png"))
        return (values / 257.0).astype(np.float32)[None]

    expected = _classes(tmp_path / "g16", write)
    data = load_dataset(DataConfig(source="folder", path=str(tmp_path / "g16"), channels=1))
    _rows_match(data, expected)
    assert data.preprocessing["pixel_scale"] == {"I;16": "value / 257 (16-bit 0-65535 onto 0-255)"}
    assert max(float(s.X.max()) for s in (data.train, data.test)) > 200  # not one clipped value


def test_a_folder_of_rgba_and_float_images(tmp_path: Path) -> None:
    def rgba(path: Path, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        rgb, alpha = rng.integers(0, 256, (4, 4, 3)), rng.integers(0, 2, (4, 4)) * 255
        Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8)).save(path.with_suffix(".png"))
        return _chw(np.where(alpha[..., None] == 255, rgb, 255))

    expected = _classes(tmp_path / "rgba", rgba)
    _rows_match(load_dataset(DataConfig(source="folder", path=str(tmp_path / "rgba"))), expected)

    def unit(path: Path, seed: int) -> np.ndarray:
        values = np.random.default_rng(seed).random((4, 4)).astype(np.float32)
        Image.fromarray(values).save(path.with_suffix(".tif"))
        return (values * np.float32(255))[None]

    expected = _classes(tmp_path / "float", unit)
    data = load_dataset(DataConfig(source="folder", path=str(tmp_path / "float"), channels=1))
    assert data.preprocessing["pixel_scale"]["F"].startswith("value x 255")
    for split in (data.train, data.test):  # x 255 of float32 values, compared to 1e-6
        for row in split.X:
            assert any(np.allclose(row, np.frombuffer(e, np.float32).reshape(row.shape), rtol=1e-6)
                       for e in expected)


def test_a_folder_mixing_float_scales_is_refused(tmp_path: Path) -> None:
    def write(path: Path, seed: int) -> np.ndarray:
        values = np.random.default_rng(seed).random((4, 4)).astype(np.float32)
        if path.parent.name == "b":
            values *= 250
        Image.fromarray(values).save(path.with_suffix(".tif"))
        return values[None]

    _classes(tmp_path / "mixed", write)
    with pytest.raises(DataError, match=r"mode 'F' \(32-bit float\) images on two scales: .*a/000.tif has "
                                        r"values within \[0, 1\].*one scale must fit them all"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path / "mixed"), channels=1))


def _plain(path: Path, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (4, 4, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path.with_suffix(".png"))
    return _chw(pixels)


def test_plain_folders_keep_their_metadata(tmp_path: Path) -> None:
    expected = _classes(tmp_path / "plain", _plain)
    (tmp_path / "plain" / "a" / "notes.txt").write_text("ignored, as before")
    data = load_dataset(DataConfig(source="folder", path=str(tmp_path / "plain")))
    _rows_match(data, expected)
    assert data.preprocessing == {"input": "image [3, 4, 4] (channels, height, width), pixel values 0-255"}


def test_hidden_and_apple_double_files_and_folders_are_skipped_and_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "zipped"
    expected = _classes(root, _plain)
    for name in ("a", "b"):
        (root / name / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not a png")
        checkpoints = root / name / ".ipynb_checkpoints"
        checkpoints.mkdir()
        for file in (root / name).glob("*.png"):  # copies: read twice if the scan recursed
            (checkpoints / file.name).write_bytes(file.read_bytes())
    (root / ".DS_Store").write_bytes(b"\x00")
    (root / "__MACOSX" / "a").mkdir(parents=True)
    (root / "__MACOSX" / "a" / "._000.png").write_bytes(b"\x00\x05\x16\x07")
    (root / "a" / "notes.txt").write_text("ignored")
    (root / "README.txt").write_text("beside the class folders")
    (root / "b" / "empty").mkdir()
    with caplog.at_level(logging.INFO, logger="training.images"):
        data = load_dataset(DataConfig(source="folder", path=str(root)))
    _rows_match(data, expected)
    assert data.preprocessing["skipped_files"] == {
        "hidden or AppleDouble files": 3,
        "hidden folders": ["zipped/__MACOSX", "zipped/a/.ipynb_checkpoints", "zipped/b/.ipynb_checkpoints"]}
    (line,) = [r.getMessage() for r in caplog.records if r.name == "training.images"]
    assert "skipped 3 hidden or AppleDouble files" in line and "3 hidden folders" in line
    assert "1 files that are not images" in line and "1 files beside the class folders" in line
    assert "1 folders without image files (zipped/b/empty)" in line


def test_a_train_test_split_layout_is_refused_with_the_fix(tmp_path: Path) -> None:
    for split in ("train", "test"):
        _classes(tmp_path / "kaggle" / split, _plain, n=3, classes=("cat", "dog"))
    with pytest.raises(DataError, match=r"kaggle: test, train hold class folders of their own \(train: cat, "
                                        r"dog\).*split layout. Point data.path at .*kaggle/train; .*"
                                        r"images of .*kaggle/test, add them to the class folders"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path / "kaggle")))


def test_folders_of_images_inside_a_class_folder_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "nested"
    _classes(root, _plain)
    (root / "b" / "more").mkdir()
    _plain(root / "b" / "more" / "x", 1)
    with pytest.raises(DataError, match=r"nested/b: class folder holds both image files and folders of "
                                        r"images \(more\); only image files directly inside"):
        load_dataset(DataConfig(source="folder", path=str(root)))
    (root / "c" / "deeper").mkdir(parents=True)
    _plain(root / "c" / "deeper" / "x", 1)
    (root / "b" / "more" / "x.png").unlink()
    with pytest.raises(DataError, match=r"nested/c: class folder holds folders of images \(deeper\)"):
        load_dataset(DataConfig(source="folder", path=str(root)))


def test_an_empty_class_folder_is_refused_by_name(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _classes(root, _plain)
    (root / "c").mkdir()
    (root / "c" / "._x.png").write_bytes(b"\x00")
    with pytest.raises(DataError, match=r"imgs/c: class folder holds no image files \(\.png, .*found 1 other "
                                        r"files; add its images or remove the folder"):
        load_dataset(DataConfig(source="folder", path=str(root)))


def test_the_ood_folder_follows_the_same_file_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "imgs"
    _classes(root, _plain)
    ood = tmp_path / "ood"
    ood.mkdir()
    for i in range(5):
        _plain(ood / f"{i}", 100 + i)
        (ood / f"._{i}.png").write_bytes(b"\x00")
    (ood / ".ipynb_checkpoints").mkdir()
    _plain(ood / ".ipynb_checkpoints" / "0", 100)
    with caplog.at_level(logging.INFO, logger="training.images"):
        data = load_dataset(DataConfig(source="folder", path=str(root), ood_path=str(ood)))
    assert data.ood["ood_ood"].shape == (5, 3, 4, 4)
    assert [r.getMessage() for r in caplog.records if r.name == "training.images"] == [
        f"{ood}: skipped 5 hidden or AppleDouble files (names starting with '.'); 1 hidden folders "
        "(ood/.ipynb_checkpoints)"]
    assert data.preprocessing["skipped_files"] == {"hidden or AppleDouble files": 5,
                                                   "hidden folders": ["ood/.ipynb_checkpoints"]}
    (ood / "sub").mkdir()
    _plain(ood / "sub" / "x", 1)
    with pytest.raises(DataError, match=r"data.ood_path .*ood: holds folders of images \(sub\)"):
        load_dataset(DataConfig(source="folder", path=str(root), ood_path=str(ood)))
    with pytest.raises(DataError, match=r"data.ood_path .*missing is not a folder of image files"):
        load_dataset(DataConfig(source="folder", path=str(root), ood_path=str(tmp_path / "missing")))


def test_float_ood_images_on_another_scale_than_the_training_images_are_refused(tmp_path: Path) -> None:
    def wide(path: Path, seed: int) -> np.ndarray:
        values = np.random.default_rng(seed).random((4, 4)).astype(np.float32) * 250
        Image.fromarray(values).save(path.with_suffix(".tif"))
        return values[None]

    _classes(tmp_path / "wide", wide)
    (tmp_path / "ood").mkdir()
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "ood" / "unit.tif")
    with pytest.raises(DataError, match=r"ood: mode 'F' \(32-bit float\) images read as value x 255.*, the "
                                        r"training images as value \(32-bit floats, values within \[0, 255\]\)"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path / "wide"), ood_path=str(tmp_path / "ood"),
                                channels=1))
