"""Pixel-side inputs of img2img, inpainting and outpainting, on real files made in tmp_path."""

from __future__ import annotations

import hashlib
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sdxs_rt import image_inputs
from sdxs_rt.errors import EXIT_NOT_FOUND, EXIT_USAGE, ModelNotFoundError, UsageError
from sdxs_rt.image_inputs import (
    DEFAULT_MASK_BLUR,
    RESIZE_MODES,
    blur_mask,
    check_mask_size,
    check_strength,
    file_sha256,
    find_by_hash,
    fit_to_size,
    image_to_array,
    latent_mask,
    least_steps,
    least_strength,
    load_image,
    load_mask,
    mask_weights,
    outpaint,
    parse_outpaint,
    paste_back,
    steps_kept,
)
from sdxs_rt.images import to_pil_images

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # test_least_strength_known_values still pins the rule
    st = None

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def random_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    values = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(values, "RGB")


def three_bands(width: int, height: int, band: int) -> Image.Image:
    """Red | green | blue vertical bands; the green one is `band` px wide, in the middle."""
    image = Image.new("RGB", (width, height), GREEN)
    side = (width - band) // 2
    image.paste(RED, (0, 0, side, height))
    image.paste(BLUE, (width - side, 0, width, height))
    return image


def write_png16_rgb(path: Path, values: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = values.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + tag + data + crc

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------- loading images


def test_png_loads_as_rgb_with_the_same_pixels(tmp_path: Path) -> None:
    source = random_rgb(24, 16)
    source.save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.mode == "RGB"
    assert loaded.size == (24, 16)
    assert np.array_equal(np.asarray(loaded), np.asarray(source))


def test_jpeg_loads_as_rgb_close_to_its_colours(tmp_path: Path) -> None:
    Image.new("RGB", (32, 24), (200, 40, 90)).save(tmp_path / "a.jpg", quality=95)
    loaded = load_image(str(tmp_path / "a.jpg"))
    assert (loaded.mode, loaded.size) == ("RGB", (32, 24))
    assert np.abs(pixels(loaded) - np.array([200, 40, 90])).max() <= 3


def test_text_file_named_png_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not pixels\n")
    with pytest.raises(UsageError, match="not an image file") as caught:
        load_image(fake)
    assert str(fake) in str(caught.value)
    assert caught.value.exit_code == EXIT_USAGE
    with pytest.raises(UsageError, match=r"mask .*not an image file"):
        load_mask(fake)


def test_empty_truncated_and_folder_inputs_are_usage_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    random_rgb(64, 64).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(data[: len(data) // 2])
    for path, message in [
        (empty, "not an image file"),
        (truncated, "damaged or truncated"),
        (tmp_path, "is a folder"),
    ]:
        with pytest.raises(UsageError, match=message) as caught:
            load_image(path)
        assert str(path) in str(caught.value)


def test_missing_file_is_not_found_with_exit_code_3(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(ModelNotFoundError, match=r"init image .*nope\.png does not exist") as c:
        load_image(missing)
    assert isinstance(c.value, FileNotFoundError)
    assert c.value.exit_code == EXIT_NOT_FOUND
    with pytest.raises(ModelNotFoundError, match=r"mask .*nope\.png"):
        load_mask(missing)


def test_rgba_image_keeps_colour_and_drops_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 120, 230)
    rgba[..., 3] = 0  # fully transparent: the colour must survive, not become a background
    rgba[0, 0] = (250, 5, 5, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (250, 5, 5)
    assert loaded.getpixel((3, 3)) == (10, 120, 230)


def test_palette_images_load_their_palette_colours(tmp_path: Path) -> None:
    palette = Image.new("P", (4, 2))
    palette.putpalette([*RED, *GREEN, *BLUE] + [0, 0, 0] * 253)
    palette.putdata([0, 1, 2, 0, 2, 2, 1, 0])
    palette.save(tmp_path / "p.png")
    palette.save(tmp_path / "pt.png", transparency=2)  # blue is the transparent index
    for name in ("p.png", "pt.png"):
        loaded = load_image(tmp_path / name)
        assert loaded.mode == "RGB"
        assert [loaded.getpixel((x, 0)) for x in range(4)] == [RED, GREEN, BLUE, RED]


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = (np.arange(16, dtype=np.uint16) * 4369).reshape(4, 4)  # 0 .. 65535 in steps of 17*257
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # really read as 16 bits
    expected = np.arange(16).reshape(4, 4) * 17
    loaded = load_image(tmp_path / "g16.png")
    assert loaded.mode == "RGB"
    assert np.array_equal(pixels(loaded)[..., 0], expected)
    assert np.array_equal(pixels(loaded)[..., 2], expected)
    mask = load_mask(tmp_path / "g16.png")
    assert mask.mode == "L"
    assert np.array_equal(pixels(mask), expected)


def test_16_bit_rgb_png_keeps_its_colours(tmp_path: Path) -> None:
    values = np.zeros((2, 3, 3), np.uint16)
    values[0, 0] = (65535, 0, 0x8080)
    values[1, 2] = (0x1234, 0xFFFF, 0x0101)
    write_png16_rgb(tmp_path / "c16.png", values)
    loaded = load_image(tmp_path / "c16.png")
    assert (loaded.mode, loaded.size) == ("RGB", (3, 2))
    assert loaded.getpixel((0, 0)) == (255, 0, 128)
    assert loaded.getpixel((2, 1)) == (0x12, 255, 1)


def test_floating_point_image_is_refused(tmp_path: Path) -> None:
    Image.new("F", (4, 4), 0.5).save(tmp_path / "f.tif")
    with pytest.raises(UsageError, match="floating-point"):
        load_image(tmp_path / "f.tif")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (8, 4), RED)
    image.paste(BLUE, (4, 0, 8, 4))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "phone.png", exif=exif)
    loaded = load_image(tmp_path / "phone.png")
    assert loaded.size == (4, 8)
    assert loaded.getpixel((0, 0)) == RED  # the left half is now on top
    assert loaded.getpixel((3, 7)) == BLUE


# ---------------------------------------------------------------- loading masks


def test_greyscale_and_rgb_masks_keep_white_as_repaint(tmp_path: Path) -> None:
    grey = Image.new("L", (8, 8), 0)
    grey.paste(255, (0, 0, 4, 8))
    grey.putpixel((7, 7), 100)
    grey.save(tmp_path / "l.png")
    grey.convert("RGB").save(tmp_path / "rgb.png")
    grey.convert("1", dither=Image.Dither.NONE).save(tmp_path / "bw.png")
    for name in ("l.png", "rgb.png"):
        mask = load_mask(tmp_path / name)
        assert mask.mode == "L"
        assert np.array_equal(np.asarray(mask), np.asarray(grey))
    bilevel = np.asarray(load_mask(tmp_path / "bw.png"))
    assert set(np.unique(bilevel)) == {0, 255}
    assert bilevel[0, 0] == 255 and bilevel[0, 7] == 0


def test_brush_on_transparency_masks_use_their_alpha(tmp_path: Path) -> None:
    # Uniform colour, varying alpha: the alpha is the drawing (opaque = repaint).
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle((2, 2, 5, 5), fill=(0, 0, 0, 255))
    rgba.save(tmp_path / "brush.png")
    la = Image.new("LA", (8, 8), (30, 0))
    la.putpixel((1, 1), (30, 200))
    la.save(tmp_path / "la.png")
    brush = np.asarray(load_mask(tmp_path / "brush.png"))
    assert brush[3, 3] == 255 and brush[0, 0] == 0 and brush.sum() == 255 * 16
    la_mask = np.asarray(load_mask(tmp_path / "la.png"))
    assert la_mask[1, 1] == 200 and la_mask.sum() == 200


def test_rgba_mask_with_varying_colour_is_read_as_grey(tmp_path: Path) -> None:
    # Colour varies: the colour is the drawing, whatever the alpha says.
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    ImageDraw.Draw(rgba).rectangle((0, 0, 3, 7), fill=(255, 255, 255, 0))
    rgba.save(tmp_path / "m.png")
    mask = np.asarray(load_mask(tmp_path / "m.png"))
    assert mask[:, :4].min() == 255 and mask[:, 4:].max() == 0


def test_palette_mask_with_transparency(tmp_path: Path) -> None:
    palette = Image.new("P", (4, 1))
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    palette.putdata([1, 0, 1, 0])
    palette.save(tmp_path / "p.png")
    assert list(load_mask(tmp_path / "p.png").getdata()) == [255, 0, 255, 0]


def test_mask_size_must_match_and_the_error_names_both_sizes() -> None:
    check_mask_size(Image.new("L", (64, 32)), (64, 32))
    with pytest.raises(UsageError, match=r"mask is 32x64 but the init image is 64x32"):
        check_mask_size(Image.new("L", (32, 64)), (64, 32))


# ---------------------------------------------------------------- sizes


def test_crop_covers_then_keeps_the_centre() -> None:
    # 300x100 -> 64x64: scaled to 192x64, the middle third (the green band) is what is kept.
    fitted = fit_to_size(three_bands(300, 100, 100), 64, 64, "crop")
    assert (fitted.mode, fitted.size) == ("RGB", (64, 64))
    inner = pixels(fitted)[:, 4:60]
    assert np.abs(inner - np.array(GREEN)).max() <= 1
    assert pixels(fitted)[..., 0].max() <= 40  # at most a Lanczos trace of the red band


def test_crop_of_a_tall_image_keeps_the_middle_rows() -> None:
    tall = three_bands(300, 100, 100).rotate(90, expand=True)  # 100x300, bands now in rows
    fitted = fit_to_size(tall, 64, 128, "crop")
    assert fitted.size == (64, 128)
    # 100x300 covers 64x128 at 0.64 (64x192): rows 32..160 of the scaled image, green 64..128.
    rows = pixels(fitted)[:, 32]
    assert np.abs(rows[40:88] - np.array(GREEN)).max() <= 1
    assert np.abs(rows[:24] - np.array(BLUE)).max() <= 1  # rotate(90) puts blue on top
    assert np.abs(rows[-24:] - np.array(RED)).max() <= 1


def test_crop_keeps_the_aspect_ratio() -> None:
    # A centred circle stays round: its width and height agree after a crop to a new aspect.
    image = Image.new("L", (200, 100), 0)
    ImageDraw.Draw(image).ellipse((70, 20, 130, 80), fill=255)
    fitted = np.asarray(fit_to_size(image, 128, 96, "crop")) > 127
    ys, xs = np.nonzero(fitted)
    assert abs((xs.max() - xs.min()) - (ys.max() - ys.min())) <= 1


def test_stretch_resizes_without_cropping() -> None:
    fitted = fit_to_size(three_bands(300, 100, 100), 64, 64, "stretch")
    assert fitted.size == (64, 64)
    assert np.abs(pixels(fitted)[:, 2] - np.array(RED)).max() <= 1
    assert np.abs(pixels(fitted)[:, 32] - np.array(GREEN)).max() <= 1
    assert np.abs(pixels(fitted)[:, 61] - np.array(BLUE)).max() <= 1


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_an_image_at_the_size_comes_back_unchanged(mode: str) -> None:
    image = random_rgb(64, 48)
    fitted = fit_to_size(image, 64, 48, mode)
    assert fitted is not image
    assert np.array_equal(np.asarray(fitted), np.asarray(image))


@pytest.mark.parametrize(
    ("size", "target", "mode"),
    [
        ((50, 70), (128, 64), "crop"),
        ((513, 97), (64, 192), "crop"),
        ((50, 70), (128, 64), "stretch"),
    ],
)
def test_every_fit_has_exactly_the_target_size(
    size: tuple[int, int], target: tuple[int, int], mode: str
) -> None:
    assert fit_to_size(random_rgb(*size), *target, mode).size == target


def test_masks_are_fitted_without_ringing() -> None:
    mask = Image.new("L", (40, 40), 0)
    mask.paste(255, (0, 0, 20, 40))
    for mode in RESIZE_MODES:
        fitted = np.asarray(fit_to_size(mask, 128, 96, mode))
        assert fitted.shape == (96, 128)
        # Three pixels from the edge at x=64, black is 0 and white 255: no Lanczos halo.
        assert fitted[:, :61].min() == 255 and fitted[:, 67:].max() == 0


def test_unknown_resize_mode_and_bad_sizes_are_refused() -> None:
    with pytest.raises(UsageError, match="unknown resize mode 'fill'; choose one of crop, stretch"):
        fit_to_size(random_rgb(8, 8), 64, 64, "fill")
    with pytest.raises(UsageError, match="both sides must be positive"):
        fit_to_size(random_rgb(8, 8), 0, 64)


# ---------------------------------------------------------------- arrays and masks


def test_image_to_array_shape_range_and_exact_round_trip() -> None:
    values = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3) % 256
    image = Image.fromarray(values.astype(np.uint8), "RGB")
    array = image_to_array(image)
    assert array.shape == (1, 3, 16, 16) and array.dtype == np.float32
    assert array.flags["C_CONTIGUOUS"]
    assert array.min() == -1.0 and array.max() == 1.0
    assert np.array_equal(np.asarray(to_pil_images(array)[0]), np.asarray(image))
    with pytest.raises(ValueError, match="RGB"):
        image_to_array(image.convert("L"))


def test_mask_weights_are_mask_over_255() -> None:
    mask = Image.fromarray(np.array([[0, 51, 255]], np.uint8), "L")
    np.testing.assert_allclose(mask_weights(mask), [[0.0, 0.2, 1.0]], atol=1e-7)
    with pytest.raises(ValueError, match="'L'"):
        mask_weights(mask.convert("RGB"))


def test_blur_radius_0_is_identity_and_blur_feathers_only_near_the_edge() -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    same = blur_mask(mask, 0)
    assert same is not mask and np.array_equal(np.asarray(same), np.asarray(mask))
    soft = np.asarray(blur_mask(mask, DEFAULT_MASK_BLUR)).astype(int)
    assert 0 < soft[10, 33] < 255 and 0 < soft[10, 30] < 255  # both sides of the edge soften
    assert soft[:, :16].min() == 255 and soft[:, 48:].max() == 0  # far away: untouched
    for radius in (-1, float("nan"), float("inf")):
        with pytest.raises(UsageError, match="mask blur"):
            blur_mask(mask, radius)


def test_latent_mask_averages_each_8x8_cell() -> None:
    mask = Image.new("L", (64, 32), 0)
    mask.paste(255, (0, 0, 36, 32))  # columns 0..35: cells 0..3 full, cell 4 half
    cells = latent_mask(mask)
    assert cells.shape == (1, 1, 4, 8) and cells.dtype == np.float32
    expected = np.array([1, 1, 1, 1, 0.5, 0, 0, 0], np.float32)
    np.testing.assert_allclose(cells[0, 0], np.tile(expected, (4, 1)), atol=1e-6)
    assert latent_mask(mask, scale_factor=4).shape == (1, 1, 8, 16)


def test_latent_mask_of_a_feathered_mask_stays_in_0_1() -> None:
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).ellipse((8, 8, 56, 56), fill=255)
    feathered = blur_mask(mask, 2)
    cells = latent_mask(feathered)
    assert cells.shape == (1, 1, 8, 8)
    assert cells.min() == 0.0 and cells.max() == 1.0  # a corner cell, a centre cell
    inner = (cells > 0) & (cells < 1)
    assert inner.any()  # the feathered rim gives partial cells
    np.testing.assert_allclose(cells.mean(), np.asarray(feathered).mean() / 255, rtol=1e-5)


def test_latent_mask_refuses_sizes_the_grid_cannot_divide() -> None:
    with pytest.raises(UsageError, match=r"mask is 60x64.*multiples of 8"):
        latent_mask(Image.new("L", (60, 64)))


# ---------------------------------------------------------------- paste back


def test_paste_back_is_exact_outside_the_mask_and_blends_inside() -> None:
    original, generated = random_rgb(64, 64, seed=1), random_rgb(64, 64, seed=2)
    hard = Image.new("L", (64, 64), 0)
    hard.paste(255, (16, 16, 48, 48))
    mask = blur_mask(hard, 4)
    result = paste_back(generated, original, mask)
    assert (result.mode, result.size) == ("RGB", (64, 64))
    weight = np.asarray(mask)
    out, old, new = pixels(result), pixels(original), pixels(generated)
    assert (weight == 0).any() and (weight == 255).any() and ((weight > 0) & (weight < 255)).any()
    assert np.array_equal(out[weight == 0], old[weight == 0])
    assert np.array_equal(out[weight == 255], new[weight == 255])
    w = (weight / 255.0)[..., None]
    assert np.abs(out - (new * w + old * (1 - w))).max() <= 0.5 + 1e-3


def test_paste_back_refuses_different_sizes() -> None:
    with pytest.raises(ValueError, match="generated 64x64, original 64x64, mask 32x64"):
        paste_back(random_rgb(64, 64), random_rgb(64, 64), Image.new("L", (32, 64)))


# ---------------------------------------------------------------- outpainting


@pytest.mark.parametrize("fill", ["edge", "mean"])
def test_outpaint_canvas_mask_and_original_pixels(fill: str) -> None:
    image = random_rgb(64, 128)
    canvas, mask = outpaint(image, 64, 128, 0, 192, fill=fill)
    assert (canvas.mode, canvas.size) == ("RGB", (256, 320))
    assert (mask.mode, mask.size) == ("L", (256, 320))
    assert np.array_equal(np.asarray(canvas.crop((64, 0, 128, 128))), np.asarray(image))
    held = np.asarray(mask)
    assert set(np.unique(held)) == {0, 255}
    assert (held[0:128, 64:128] == 0).all()
    assert (held == 0).sum() == 64 * 128
    assert (held == 255).sum() == 256 * 320 - 64 * 128


def test_edge_fill_continues_the_border_colours() -> None:
    image = Image.new("RGB", (64, 512), RED)
    image.paste(BLUE, (0, 256, 64, 512))
    canvas, _ = outpaint(image, 0, 64, 0, 0, fill="edge")
    new = pixels(canvas)[:, 64:]
    assert np.abs(new[:32] - np.array(RED)).max() <= 2  # far from the colour change: pure
    assert np.abs(new[-32:] - np.array(BLUE)).max() <= 2
    assert (new[256, :, 0] > 64).all() and (new[256, :, 2] > 64).all()  # blurred, no hard seam
    uniform, _ = outpaint(Image.new("RGB", (64, 64), (12, 34, 56)), 64, 64, 64, 64)
    assert np.abs(pixels(uniform) - np.array([12, 34, 56])).max() <= 1


def test_mean_fill_paints_the_mean_colour() -> None:
    image = Image.new("RGB", (64, 64), (10, 20, 30))
    image.paste((30, 60, 90), (0, 32, 64, 64))
    canvas, _ = outpaint(image, 0, 0, 64, 0, fill="mean")
    assert (pixels(canvas)[:64] == np.array([20, 40, 60])).all()


@pytest.mark.parametrize(
    ("amounts", "message"),
    [
        ((-64, 0, 0, 0), "outpaint left must be 0 or more pixels, got -64"),
        ((0, 100, 0, 0), "outpaint right 100 is not a multiple of 64; use 64 or 128"),
        ((0, 0, 32, 0), "outpaint top 32 is not a multiple of 64; use 0 or 64"),
        ((0, 0, 0, 0), "at least one side above 0"),
        ((0, 0, 0, 64.0), "outpaint bottom must be a whole number of pixels, got 64.0"),
        ((True, 0, 0, 0), "outpaint left must be a whole number"),
    ],
)
def test_outpaint_refuses_bad_amounts(amounts: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace(".", r"\.")):
        outpaint(random_rgb(64, 64), *amounts)


def test_outpaint_takes_numpy_integers_and_refuses_unknown_fill() -> None:
    canvas, _ = outpaint(random_rgb(64, 64), *np.array([64, 0, 0, 0]))
    assert canvas.size == (128, 64)
    with pytest.raises(UsageError, match="unknown outpaint fill 'zero'; choose one of edge, mean"):
        outpaint(random_rgb(64, 64), 64, 0, 0, 0, fill="zero")


@pytest.mark.parametrize(
    ("text", "amounts"),
    [
        ("64,64,0,0", (64, 64, 0, 0)),
        (" 0, 128 ,64,0 ", (0, 128, 64, 0)),
        ("0,0,0,64", (0, 0, 0, 64)),
    ],
)
def test_parse_outpaint_accepts(text: str, amounts: tuple[int, int, int, int]) -> None:
    assert parse_outpaint(text) == amounts


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("64,64,0", "four whole numbers"),
        ("64,64,0,0,0", "four whole numbers"),
        ("", "four whole numbers"),
        ("a,b,c,d", "four whole numbers"),
        ("64.0,0,0,0", "four whole numbers"),
        ("6_4,0,0,0", "four whole numbers"),
        ("+64,0,0,0", "four whole numbers"),
        ("64 64 0 0", "four whole numbers"),
        ("-64,0,0,0", "left must be 0 or more"),
        ("0,0,65,0", "top 65 is not a multiple of 64"),
        ("0,0,0,0", "at least one side"),
    ],
)
def test_parse_outpaint_refuses(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_outpaint(text)


# ---------------------------------------------------------------- hashes


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    random_rgb(8, 8).save(path)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_find_by_hash_finds_a_renamed_copy(tmp_path: Path) -> None:
    original = tmp_path / "init.png"
    random_rgb(16, 16, seed=3).save(original)
    folder = tmp_path / "library"
    folder.mkdir()
    random_rgb(16, 16, seed=4).save(folder / "another.png")
    shutil.copy(original, folder / "holiday.PNG")
    digest = file_sha256(original)
    assert find_by_hash(folder, digest) == folder / "holiday.PNG"
    assert find_by_hash(folder, digest.upper()) == folder / "holiday.PNG"
    assert find_by_hash(folder, hashlib.sha256(b"other").hexdigest()) is None


def test_find_by_hash_skips_other_suffixes_and_subfolders(tmp_path: Path) -> None:
    original = tmp_path / "init.png"
    random_rgb(16, 16).save(original)
    folder = tmp_path / "library"
    (folder / "deeper").mkdir(parents=True)
    shutil.copy(original, folder / "init.txt")
    shutil.copy(original, folder / "deeper" / "init.png")
    assert find_by_hash(folder, file_sha256(original)) is None


def test_find_by_hash_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(5):
        random_rgb(8, 8, seed=index).save(tmp_path / f"{index}.png")
    digest = file_sha256(tmp_path / "4.png")  # last in name order
    hashed: list[str] = []
    real = image_inputs.file_sha256

    def counting(path: Path) -> str:
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(image_inputs, "file_sha256", counting)
    assert find_by_hash(tmp_path, digest, max_files=3) is None
    assert hashed == ["0.png", "1.png", "2.png"]
    assert find_by_hash(tmp_path, digest, max_files=5) == tmp_path / "4.png"


def test_find_by_hash_refuses_a_missing_folder_and_a_bad_hash(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        find_by_hash(tmp_path / "nope", "0" * 64)
    for bad in ("abc", "g" * 64, "0" * 65):
        with pytest.raises(UsageError, match="not a SHA-256 hash"):
            find_by_hash(tmp_path, bad)


# ---------------------------------------------------------------- strength and steps


@pytest.mark.parametrize("strength", [1, 1.0, 0.75, 0.001, 5e-324])
def test_check_strength_accepts_0_to_1(strength: float) -> None:
    check_strength(strength)


@pytest.mark.parametrize("strength", [0, 0.0, -0.1, 1.0000001, 2, float("nan"), float("inf")])
def test_check_strength_refuses_out_of_range(strength: float) -> None:
    with pytest.raises(UsageError, match=r"strength must be in \(0, 1\]"):
        check_strength(strength)


@pytest.mark.parametrize("strength", [True, "0.5", None])
def test_check_strength_refuses_non_numbers(strength: object) -> None:
    with pytest.raises(UsageError, match="strength must be a number"):
        check_strength(strength)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("steps", "strength", "kept"),
    [(40, 0.75, 30), (40, 1.0, 40), (10, 0.35, 3), (1, 1.0, 1), (3, 0.334, 1), (7, 0.99, 6)],
)
def test_steps_kept_is_diffusers_int_steps_times_strength(
    steps: int, strength: float, kept: int
) -> None:
    assert steps_kept(steps, strength) == kept == min(int(steps * strength), steps)


def test_too_low_strength_names_the_least_strength_and_steps() -> None:
    with pytest.raises(
        UsageError,
        match=r"strength 0\.05 with 10 steps leaves no step to run; raise the strength to at "
        r"least 0\.1 or the steps to at least 20$",
    ):
        steps_kept(10, 0.05)
    # The float product 49 * (1/49) is just under 1, so diffusers keeps no step either.
    with pytest.raises(UsageError, match=r"at least 0\.021 "):
        steps_kept(49, 1 / 49)


def test_tiny_strength_message_leaves_out_an_impossible_step_count() -> None:
    with pytest.raises(UsageError, match=r"at least 0\.1$"):
        steps_kept(10, 5e-324)
    with pytest.raises(UsageError, match="too small to leave a step"):
        least_steps(5e-324)


@pytest.mark.parametrize("steps", [0, -1, 2.5, True, None])
def test_steps_kept_refuses_bad_step_counts(steps: object) -> None:
    with pytest.raises(UsageError, match="steps must be a whole number of at least 1"):
        steps_kept(steps, 0.5)  # type: ignore[arg-type]


def test_least_strength_and_least_steps_known_values() -> None:
    assert [least_strength(n) for n in (1, 2, 3, 7, 40, 49, 1000, 5000)] == [
        1.0, 0.5, 0.334, 0.143, 0.025, 0.021, 0.001, 0.001,
    ]  # fmt: skip
    assert [least_steps(s) for s in (1.0, 0.5, 0.3, 0.25, 0.1, 1 / 3)] == [1, 2, 4, 4, 10, 3]
    assert least_steps(1 / 49) == 50  # 49 * (1/49) < 1 in floats


if st is not None:

    @settings(max_examples=300, deadline=None)
    @given(st.integers(1, 200))
    def test_least_strength_is_the_least_on_the_thousandths(steps: int) -> None:
        strength = least_strength(steps)
        assert round(strength, 3) == strength and 0 < strength <= 1
        assert steps_kept(steps, strength) >= 1
        lower = round(strength - 0.001, 3)  # > 0: 200 steps need at least 0.005
        assert int(steps * lower) == 0
        with pytest.raises(UsageError, match=f"raise the strength to at least {strength:g}"):
            steps_kept(steps, lower)

    @settings(max_examples=300, deadline=None)
    @given(st.floats(0.001, 1.0, allow_nan=False))
    def test_least_steps_is_the_fewest_that_keep_a_step(strength: float) -> None:
        steps = least_steps(strength)
        assert 1 <= steps <= 1001
        assert steps_kept(steps, strength) >= 1
        if steps > 1:
            assert int((steps - 1) * strength) == 0
            with pytest.raises(UsageError, match=f"steps to at least {steps}$"):
                steps_kept(steps - 1, strength)
