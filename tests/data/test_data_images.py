"""Image decoding: awkward modes are converted, broken files raise errors that name the file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import datagen
from hgltr_cli.data.images import DEFAULT_MAX_PIXELS, BadImageError, BadImageReport, load_image_rgb, to_rgb
from hgltr_cli.errors import HgltrError


@pytest.mark.parametrize("mode,color", [("L", 77), ("1", 1), ("RGB", (1, 2, 3)), ("I", 200), ("F", 0.5),
                                        ("LA", (50, 255)), ("RGBA", (9, 8, 7, 255)), ("CMYK", (0, 0, 0, 0)),
                                        ("YCbCr", (128, 128, 128))])
def test_every_mode_becomes_rgb(mode, color):
    out = to_rgb(Image.new(mode, (5, 4), color))
    assert out.mode == "RGB" and out.size == (5, 4)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    full = load_image_rgb(datagen.sixteen_bit_png(tmp_path / "a.png", value=65535))
    half = load_image_rgb(datagen.sixteen_bit_png(tmp_path / "b.png", value=32768))
    assert full.mode == "RGB"
    assert np.asarray(full).min() == 255
    # PIL's own convert would clip 32768 to 255; scaling maps it to the middle of the 8-bit range
    assert np.asarray(half)[0, 0, 0] == round(32768 * 255 / 65535)


def test_alpha_is_composited_on_white(tmp_path):
    arr = np.asarray(load_image_rgb(datagen.rgba_png(tmp_path / "a.png")))
    assert tuple(arr[0, 0]) == (255, 0, 0)  # opaque red stays red
    assert tuple(arr[-1, 0]) == (255, 255, 255)  # transparent -> white background, not black


def test_palette_with_transparency(tmp_path):
    arr = np.asarray(load_image_rgb(datagen.palette_png_transparent(tmp_path / "p.png")))
    assert tuple(arr[0, 0]) == (255, 0, 0)
    assert tuple(arr[1, 1]) == (255, 255, 255)  # the transparent (blue) index


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "c.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p)  # pure red in CMYK
    arr = np.asarray(load_image_rgb(p)).astype(int)
    assert arr.shape == (16, 16, 3)
    assert arr[..., 0].mean() > 200 and arr[..., 1].mean() < 60 and arr[..., 2].mean() < 60


def test_exif_orientation_applied(tmp_path):
    p = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.new("RGB", (40, 20), (0, 128, 0)).save(p, exif=exif)
    assert load_image_rgb(p).size == (20, 40)


def test_large_image_converts_and_draft_shrinks_jpeg(tmp_path):
    p = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 2000), (10, 20, 30)).save(p, quality=80)
    assert load_image_rgb(p).size == (3000, 2000)
    small = load_image_rgb(p, draft_size=224)
    assert min(small.size) >= 224 and small.size[0] < 3000  # decoded at reduced scale, still >= 224


@pytest.mark.parametrize("maker,needle", [
    (datagen.zero_byte, "empty"),
    (datagen.corrupt, "not a recognised image"),
    (datagen.truncated_jpeg, "truncated"),
    (datagen.huge_png_header, "decompression-bomb"),
])
def test_bad_files_raise_naming_the_file_and_the_switch(tmp_path, maker, needle):
    p = maker(tmp_path / "sub" / "bad_file.img")
    with pytest.raises(BadImageError) as info:
        load_image_rgb(p)
    err = info.value
    assert isinstance(err, HgltrError)
    assert str(p) in err.message and needle in err.message
    assert "dataset.skip_bad_images=true" in err.hint


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BadImageError, match="not found"):
        load_image_rgb(tmp_path / "nope.png")
    with pytest.raises(BadImageError, match="directory"):
        load_image_rgb(tmp_path)


def test_bomb_guard_is_configurable_and_does_not_leak(tmp_path, monkeypatch):
    p = datagen.save_image(tmp_path / "m.png", size=(100, 100))
    before = Image.MAX_IMAGE_PIXELS
    monkeypatch.setenv("HGLTR_MAX_IMAGE_PIXELS", str(100 * 100 - 1))
    with pytest.raises(BadImageError, match="HGLTR_MAX_IMAGE_PIXELS"):
        load_image_rgb(p)
    monkeypatch.setenv("HGLTR_MAX_IMAGE_PIXELS", "0")  # 0 = no limit
    assert load_image_rgb(p).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == before  # PIL's global guard is restored
    monkeypatch.delenv("HGLTR_MAX_IMAGE_PIXELS")
    huge = datagen.huge_png_header(tmp_path / "h2.png")
    assert 20000 * 20000 > DEFAULT_MAX_PIXELS
    with pytest.raises(BadImageError):
        load_image_rgb(huge)


def test_bytes_and_file_objects(tmp_path):
    p = datagen.save_image(tmp_path / "x.png", color=(1, 2, 3))
    assert load_image_rgb(p.read_bytes()).getpixel((0, 0)) == (1, 2, 3)
    with open(p, "rb") as fh:
        assert load_image_rgb(fh).size == (16, 12)
    with pytest.raises(BadImageError, match="<in-memory image>"):
        load_image_rgb(b"not an image")


def test_bad_image_report_dedups_and_counts():
    r = BadImageReport()
    assert not r and r.summary() == "no bad images"
    r.extend([("a.png", "empty"), ("b.png", "truncated"), ("a.png", "empty")])
    assert r.count == 2 and r.hits == 3 and bool(r)
    assert r.lines() == ["a.png: empty", "b.png: truncated"]
    assert r.to_dict()["count"] == 2 and "skipped 2 bad image" in r.summary()
