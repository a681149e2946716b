"""The upload corpus: images in every format and mode a server must classify, and bad uploads it
must refuse with the right status, made in memory (plain PIL, no files).

The server's tests and the soak bench (bench/soak.py) send the same corpus.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def photo(size: tuple[int, int] = (80, 60), mode: str = "RGB") -> Image.Image:
    """A small image with structure (so rotations change it), in `mode`."""
    img = Image.new("RGB", size, (40, 160, 40))
    for x in range(size[0] // 3):
        for y in range(size[1] // 2):
            img.putpixel((x, y), (230, 200, 30))
    return img.convert(mode) if mode != "RGB" else img


def exif_rotated_jpeg() -> tuple[bytes, bytes]:
    """(JPEG stored sideways with EXIF orientation 6, the same picture stored upright)."""
    upright = photo((80, 60))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 rotates it back
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", exif=exif.tobytes(), quality=95), encode(upright, "JPEG", quality=95)


def palette_png_with_transparency() -> bytes:
    img = photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return encode(img, "PNG", transparency=0)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A complete 1-bit grayscale PNG of width x height zeros: a few KB that decode to `width*height` pixels."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


GOOD: dict[str, tuple[bytes, str]] = {}


def good_corpus() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type) of images that must classify with 200."""
    if not GOOD:
        GOOD.update(
            {
                "jpeg": (encode(photo(), "JPEG"), "image/jpeg"),
                "png": (encode(photo(), "PNG"), "image/png"),
                "webp": (encode(photo(), "WEBP"), "image/webp"),
                "grayscale_jpeg": (encode(photo(mode="L"), "JPEG"), "image/jpeg"),
                "grayscale_png": (encode(photo(mode="L"), "PNG"), "image/png"),
                "png_16bit": (encode(photo(mode="L").convert("I;16"), "PNG"), "image/png"),
                "rgba_png": (encode(photo(mode="RGBA"), "PNG"), "image/png"),
                "palette_png": (palette_png_with_transparency(), "image/png"),
                "cmyk_jpeg": (encode(photo(mode="CMYK"), "JPEG"), "image/jpeg"),
                "exif_rotated_jpeg": (exif_rotated_jpeg()[0], "image/jpeg"),
                "tall_photo": (encode(photo((30, 200)), "JPEG"), "image/jpeg"),
                "tiny_1px": (encode(photo((1, 1)), "PNG"), "image/png"),
                "wrong_content_type_header": (encode(photo(), "PNG"), "application/octet-stream"),
            }
        )
    return GOOD


def bad_corpus(max_upload_bytes: int) -> dict[str, tuple[bytes, str, int]]:
    """name -> (bytes, content type, expected status) for single-file uploads."""
    jpeg = encode(photo((200, 200)), "JPEG")
    return {
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "image/jpeg", 400),
        "truncated_png": (encode(photo((200, 200)), "PNG")[:300], "image/png", 400),
        "not_an_image_text": (b"hello, I am not a picture\n" * 20, "text/plain", 400),
        "not_an_image_html_as_jpeg": (b"<html><body>nope</body></html>", "image/jpeg", 400),
        "empty_file": (b"", "image/jpeg", 400),
        "random_bytes": (bytes(range(256)) * 40, "image/png", 400),
        "gif": (encode(photo(), "GIF"), "image/gif", 415),
        "bmp": (encode(photo(), "BMP"), "image/bmp", 415),
        "tiff": (encode(photo(), "TIFF"), "image/tiff", 415),
        "decompression_bomb_over_max_pixels": (bomb_png(8_000, 8_000), "image/png", 400),
        "decompression_bomb_over_pillow_limit": (bomb_png(20_000, 20_000), "image/png", 400),
        "oversized": (b"\xff\xd8\xff" + b"\0" * max_upload_bytes, "image/jpeg", 413),
    }
