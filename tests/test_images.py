"""Array -> image conversion, atomic PNG saving, and `-o/--output` naming and checks."""

from __future__ import annotations

import datetime as dt
import errno
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from sdxs_rt import images
from sdxs_rt.errors import OutputExistsError, UsageError
from sdxs_rt.images import OutputNamer, check_outputs, output_paths, save_png, to_pil_images

DAY = dt.date(2025, 3, 9)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def image(color: tuple[int, int, int] = (1, 2, 3)) -> Image.Image:
    return Image.new("RGB", (4, 2), color)


def names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------- to_pil_images


def test_to_pil_images_matches_the_model_card_conversion() -> None:
    rng = np.random.default_rng(0)
    decoded = rng.uniform(-1.3, 1.3, size=(2, 3, 5, 7)).astype(np.float32)
    expected = ((decoded / 2 + 0.5).clip(0, 1) * 255).round().astype(np.uint8)
    result = to_pil_images(decoded)
    assert [(im.mode, im.size) for im in result] == [("RGB", (7, 5))] * 2
    for im, want in zip(result, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(im), want.transpose(1, 2, 0))


def test_to_pil_images_known_values_and_channel_order() -> None:
    decoded = np.zeros((1, 3, 1, 4), dtype=np.float32)
    decoded[0, 0] = [-1.0, 0.0, 1.0, 5.0]  # red: black, mid (127.5 rounds to even 128), white, clip
    decoded[0, 1] = -1.0
    decoded[0, 2] = [np.nan, -5.0, 1.0, 1.0]  # NaN (fp16 overflow) becomes black, not garbage
    pixels = np.asarray(to_pil_images(decoded)[0])
    assert pixels[0, :, 0].tolist() == [0, 128, 255, 255]
    assert pixels[0, :, 1].tolist() == [0, 0, 0, 0]
    assert pixels[0, :, 2].tolist() == [0, 0, 255, 255]


def test_to_pil_images_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="B, 3, H, W"):
        to_pil_images(np.zeros((1, 4, 2, 2)))


# ---------------------------------------------------------------- save_png


def test_save_png_writes_metadata_creates_folders_and_leaves_no_temp(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat")
    target = tmp_path / "new" / "deeper" / "x.png"
    assert save_png(image(), target, pnginfo=info) == target
    with Image.open(target) as saved:
        assert saved.format == "PNG" and saved.info["parameters"] == "a cat"
        assert saved.getpixel((0, 0)) == (1, 2, 3)
    assert names(target.parent) == ["x.png"]


def test_saved_file_mode_follows_the_umask_not_the_temp_file_default(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        save_png(image(), tmp_path / "x.png")
    finally:
        os.umask(old)
    assert (tmp_path / "x.png").stat().st_mode & 0o777 == 0o644


def test_existing_file_is_refused_without_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    target.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="exists; pass --overwrite to replace it"):
        save_png(image(), target)
    assert target.read_bytes() == b"precious" and names(tmp_path) == ["x.png"]


def test_overwrite_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    save_png(image((9, 9, 9)), target, overwrite=True)
    with Image.open(target) as saved:
        assert saved.getpixel((0, 0)) == (9, 9, 9)
    assert names(tmp_path) == ["x.png"]


def test_failed_write_leaves_neither_temp_nor_target(tmp_path: Path, monkeypatch) -> None:
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")  # a partial write, then the failure
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    for overwrite in (False, True):
        with pytest.raises(RuntimeError, match="encoder crashed"):
            save_png(image(), tmp_path / "x.png", overwrite=overwrite)
        assert names(tmp_path) == []


def test_failed_write_keeps_the_old_file_when_overwriting(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    with pytest.raises(OSError, match="EIO"):
        save_png(image(), target, overwrite=True)
    assert target.read_bytes() == b"old" and names(tmp_path) == ["x.png"]


def test_file_appearing_during_the_write_is_not_clobbered(tmp_path: Path, monkeypatch) -> None:
    """The early check passes, then another process creates the file: the link refuses."""
    target = tmp_path / "x.png"
    real_write = images.write_png

    def write_then_race(fd, im, info):
        real_write(fd, im, info)
        target.write_bytes(b"the other writer")

    monkeypatch.setattr(images, "write_png", write_then_race)
    with pytest.raises(OutputExistsError):
        save_png(image(), target)
    assert target.read_bytes() == b"the other writer" and names(tmp_path) == ["x.png"]


@pytest.mark.parametrize("race", [False, True])
def test_without_hard_links_falls_back_to_exclusive_create(
    tmp_path: Path, monkeypatch, race: bool
) -> None:
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")  # what vfat reports

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "x.png"
    if race:
        monkeypatch.setattr(os.path, "lexists", lambda p: False)  # skip the early check
        target.write_bytes(b"the other writer")
        with pytest.raises(OutputExistsError):
            save_png(image(), target)
        assert target.read_bytes() == b"the other writer"
    else:
        save_png(image(), target)
        with Image.open(target) as saved:
            assert saved.getpixel((0, 0)) == (1, 2, 3)
    assert names(tmp_path) == ["x.png"]


def test_fallback_failure_removes_its_claim_on_the_name(tmp_path: Path, monkeypatch) -> None:
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    def failing_replace(src, dst):
        raise OSError(errno.EIO, "EIO")

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="EIO"):
        save_png(image(), tmp_path / "x.png")
    assert names(tmp_path) == []  # neither the empty claimed file nor the temp file


def test_unwritable_folder_simulated_is_a_usage_error(tmp_path: Path, monkeypatch) -> None:
    real_open = os.open

    def refuse_temp(path, flags, mode=0o777, **kwargs):
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", refuse_temp)
    with pytest.raises(UsageError, match=r"cannot write to .*Permission denied") as caught:
        save_png(image(), tmp_path / "x.png")
    assert str(tmp_path) in str(caught.value)


@pytest.mark.skipif(IS_ROOT, reason="root writes through chmod 0o500")
def test_unwritable_folder_really_chmodded(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(UsageError, match="locked"):
            save_png(image(), locked / "x.png")
        with pytest.raises(UsageError, match="locked"):
            save_png(image(), locked / "sub" / "x.png")
        with pytest.raises(UsageError, match="not writable"):
            check_outputs([locked / "x.png"])
    finally:
        locked.chmod(0o700)


def test_parent_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="a file has that name"):
        save_png(image(), tmp_path / "file" / "x.png")


# ---------------------------------------------------------------- output naming


def test_no_value_is_the_outputs_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert output_paths(None, [7, 8], DAY) == [
        Path("outputs/00000-7.png"),
        Path("outputs/00001-8.png"),
    ]


def test_folder_mode_continues_after_the_highest_number(tmp_path: Path) -> None:
    for name in ["00007-1.png", "00003-99.png", "00012.txt", "123-5.png", "notes.txt", "abc.png"]:
        (tmp_path / name).write_text("")
    (tmp_path / "00020x.png").write_text("")  # not a running number: no separator after it
    assert output_paths(str(tmp_path), [42, 43], DAY) == [
        tmp_path / "00013-42.png",
        tmp_path / "00014-43.png",
    ]


def test_trailing_separator_means_a_new_folder(tmp_path: Path) -> None:
    value = str(tmp_path / "fresh") + os.sep
    assert output_paths(value, [5], DAY) == [tmp_path / "fresh" / "00000-5.png"]
    assert output_paths(str(tmp_path / "runs" / "{date}") + "/", [5], DAY) == [
        tmp_path / "runs" / "2025-03-09" / "00000-5.png"
    ]
    with pytest.raises(UsageError, match="only \\{date\\}"):
        output_paths(str(tmp_path / "{seed}") + "/", [5], DAY)


def test_folder_mode_never_collides_across_runs(tmp_path: Path) -> None:
    first = output_paths(str(tmp_path), [1, 1 + 1], DAY)
    for path in first:
        save_png(image(), path)
    second = output_paths(str(tmp_path), [1], DAY)
    assert second == [tmp_path / "00002-1.png"]
    check_outputs(second)


def test_pattern_placeholders(tmp_path: Path) -> None:
    pattern = str(tmp_path / "{date}" / "img-{seed}-{index:03d}")
    assert output_paths(pattern, [10, 11], DAY) == [
        tmp_path / "2025-03-09" / "img-10-000.png",
        tmp_path / "2025-03-09" / "img-11-001.png",
    ]
    assert output_paths(str(tmp_path / "s{seed}.PNG"), [3], DAY) == [tmp_path / "s3.PNG"]
    assert output_paths(str(tmp_path / "img.{seed}"), [3], DAY) == [tmp_path / "img.3.png"]


def test_plain_file_name_single_and_several_images(tmp_path: Path) -> None:
    assert output_paths(str(tmp_path / "cat.png"), [1], DAY) == [tmp_path / "cat.png"]
    assert output_paths(str(tmp_path / "cat"), [1], DAY) == [tmp_path / "cat.png"]
    assert output_paths(str(tmp_path / "cat.png"), [1, 2], DAY) == [
        tmp_path / "cat-0.png",
        tmp_path / "cat-1.png",
    ]
    assert output_paths(str(tmp_path / "{date}"), [1, 2], DAY) == [
        tmp_path / "2025-03-09-0.png",
        tmp_path / "2025-03-09-1.png",
    ]


def test_date_defaults_to_today(tmp_path: Path) -> None:
    today = dt.date.today().isoformat()
    assert OutputNamer(str(tmp_path / "{date}")).paths([1]) == [tmp_path / f"{today}.png"]


@pytest.mark.parametrize("value", ["cat.jpg", "cat.JPEG", "cat.webp", "x.txt"])
def test_other_extensions_are_refused(value: str) -> None:
    with pytest.raises(UsageError, match="writes only PNG"):
        output_paths(value, [1], DAY)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("img-{prompt}.png", "unknown placeholder \\{prompt\\}"),
        ("img-{}.png", "unknown placeholder"),
        ("img-{seed.png", "malformed"),
        ("img-{seed:q}.png", "cannot be filled in"),
    ],
)
def test_bad_patterns_are_usage_errors(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        output_paths(value, [1, 2], DAY)


def test_pattern_giving_two_images_one_name_is_refused() -> None:
    with pytest.raises(UsageError, match="same name"):
        output_paths("{seed}.png", [4, 4], DAY)


# ---------------------------------------------------------------- check_outputs


def test_check_outputs_refuses_existing_before_generating(tmp_path: Path) -> None:
    (tmp_path / "b.png").write_bytes(b"x")
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    with pytest.raises(OutputExistsError, match=r"b\.png exists; pass --overwrite"):
        check_outputs(paths, overwrite=False)
    check_outputs(paths, overwrite=True)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        check_outputs([tmp_path / "dir.png"], overwrite=True)


def test_check_outputs_asks_os_access_on_the_nearest_existing_folder(
    tmp_path: Path, monkeypatch
) -> None:
    asked: list[Path] = []

    def deny(path, mode):
        asked.append(Path(path))
        return False

    monkeypatch.setattr(os, "access", deny)
    target = tmp_path / "not" / "yet" / "x.png"
    with pytest.raises(UsageError, match="not writable") as caught:
        check_outputs([target])
    assert asked == [tmp_path] and str(target.parent) in str(caught.value)
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    check_outputs([target])
    assert not (tmp_path / "not").exists()  # checking creates nothing


def test_check_outputs_refuses_a_file_in_place_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        check_outputs([tmp_path / "file" / "sub" / "x.png"])
