"""Preprocessing: every supported image becomes upright RGB; bad input is an ImageError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from greenr.data.images import (
    ImageError,
    Preprocessing,
    decode_image,
    load_model_input,
    to_uint8_array,
)


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def two_halves(width: int = 40, height: int = 20) -> Image.Image:
    """Left half red, right half blue."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    array[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(array, "RGB")


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    img = decode_image(encode(two_halves(), "JPEG", quality=95, exif=exif.tobytes()))
    assert img.size == (20, 40) and img.mode == "RGB"
    top, bottom = np.asarray(img)[2, 10], np.asarray(img)[-3, 10]
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_rgba_is_composited_on_white():
    array = np.zeros((8, 8, 4), dtype=np.uint8)
    array[:, :4] = (255, 0, 0, 255)  # opaque red
    array[:, 4:] = (0, 255, 0, 0)  # fully transparent
    img = decode_image(encode(Image.fromarray(array, "RGBA"), "PNG"))
    assert img.mode == "RGB"
    assert tuple(np.asarray(img)[0, 0]) == (255, 0, 0)
    assert tuple(np.asarray(img)[0, 7]) == (255, 255, 255)


def test_palette_images_with_and_without_transparency():
    palette = Image.new("P", (6, 6), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    plain = decode_image(encode(palette, "PNG"))
    assert plain.mode == "RGB" and tuple(np.asarray(plain)[0, 0]) == (10, 200, 30)
    see_through = decode_image(encode(palette, "PNG", transparency=1))
    assert tuple(np.asarray(see_through)[0, 0]) == (255, 255, 255)


def test_grayscale_becomes_three_equal_channels():
    img = decode_image(encode(Image.new("L", (5, 5), 77), "PNG"))
    assert img.mode == "RGB" and tuple(np.asarray(img)[2, 2]) == (77, 77, 77)


def test_cmyk_jpeg_becomes_rgb():
    img = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    assert img.mode == "RGB"
    red, green, blue = (int(v) for v in np.asarray(img)[8, 8])
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_png_is_scaled_to_8_bit():
    array = np.zeros((4, 4), dtype=np.uint16)
    array[0, 0], array[0, 1] = 60000, 30000
    source = Image.fromarray(array)
    assert source.mode.startswith("I;16")
    out = np.asarray(decode_image(encode(source, "PNG")))
    assert out.dtype == np.uint8 and tuple(out[0, 0]) == (255, 255, 255)
    assert abs(int(out[0, 1, 0]) - 127) <= 1 and tuple(out[3, 3]) == (0, 0, 0)


@pytest.mark.parametrize("cut", [100, 400, -200])
def test_truncated_jpeg_is_an_invalid_image(cut: int):
    data = encode(two_halves(64, 64), "JPEG", quality=95)
    with pytest.raises(ImageError) as err:
        decode_image(data[:cut])
    assert err.value.kind == "invalid" and "truncated or corrupt" in err.value.reason


def test_non_image_is_an_invalid_image():
    with pytest.raises(ImageError) as err:
        decode_image(b"%PDF-1.7 definitely not a picture")
    assert err.value.kind == "invalid" and err.value.reason == "not a recognised image"


def test_unsupported_format_says_which():
    with pytest.raises(ImageError) as err:
        decode_image(encode(two_halves(), "BMP"))
    assert err.value.kind == "unsupported" and "BMP" in err.value.reason


def test_too_many_pixels_is_too_large_before_decoding():
    with pytest.raises(ImageError) as err:
        decode_image(encode(two_halves(), "PNG"), max_pixels=799)
    assert err.value.kind == "too_large" and "40x20" in err.value.reason


def test_decompression_bomb_is_too_large(monkeypatch: pytest.MonkeyPatch):
    data = encode(Image.new("1", (200, 200)), "PNG")  # tiny file, 40k pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # what PIL calls a bomb, scaled down
    with pytest.raises(ImageError) as err:
        decode_image(data)
    assert err.value.kind == "too_large"


def test_to_uint8_array_crops_the_centre_square():
    spec = Preprocessing(image_size=32)
    tensor = to_uint8_array(decode_image(encode(two_halves(64, 32), "PNG")), spec)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == np.uint8 and tensor.flags["C_CONTIGUOUS"]
    # the centre square of a red|blue image is half red, half blue
    assert tensor[0, 16, 4] == 255 and tensor[2, 16, 27] == 255


def test_load_model_input_is_the_same_from_bytes_and_from_a_file(tmp_path):
    data = encode(two_halves(50, 30), "JPEG", quality=90)
    (tmp_path / "x.jpg").write_bytes(data)
    spec = Preprocessing(image_size=24)
    assert np.array_equal(load_model_input(data, spec), load_model_input(tmp_path / "x.jpg", spec))


def test_preprocessing_round_trips_through_a_dict():
    spec = Preprocessing(image_size=96, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert Preprocessing.from_dict(spec.to_dict()) == spec
