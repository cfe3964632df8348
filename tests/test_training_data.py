"""Training data: folder layouts, their errors, aspect-ratio buckets and bucketed batches."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from sdxs_rt.errors import ModelNotFoundError, UsageError
from sdxs_rt.training.buckets import (
    Bucket,
    assign_bucket,
    assign_buckets,
    bucket_batches,
    group_by_bucket,
    make_buckets,
    resize_and_crop,
)
from sdxs_rt.training.data import TrainingExample, load_examples, load_hf_dataset


def _png(path: Path, size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path


def test_caption_files_pair_with_images_sorted(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg", "sub/c.webp"):
        image = _png(tmp_path / name)
        image.with_suffix(".txt").write_text(f" caption {image.stem}\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not an image")
    examples = load_examples(tmp_path)
    assert [e.path.relative_to(tmp_path).as_posix() for e in examples] == [
        "a.jpg",
        "b.png",
        "sub/c.webp",
    ]
    assert [e.caption for e in examples] == ["caption a", "caption b", "caption c"]


def test_missing_captions_are_an_error_naming_three_or_empty_when_asked(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        _png(tmp_path / f"{name}.png")
    _png(tmp_path / "e.png").with_suffix(".txt").write_text("e")
    with pytest.raises(UsageError, match=r"4 image\(s\).*a\.png, b\.png, c\.png and 1 more"):
        load_examples(tmp_path)
    examples = load_examples(tmp_path, missing_caption="empty")
    assert [e.caption for e in examples] == ["", "", "", "", "e"]
    with pytest.raises(UsageError, match="missing_caption"):
        load_examples(tmp_path, missing_caption="skip")  # type: ignore[arg-type]


def test_metadata_jsonl_is_used_when_present(tmp_path: Path) -> None:
    _png(tmp_path / "img" / "2.png")
    _png(tmp_path / "img" / "1.png")
    _png(tmp_path / "ignored.png").with_suffix(".txt").write_text("ignored")
    lines = [
        {"file_name": "img/2.png", "text": "two"},
        {"file_name": "img/1.png", "text": "one"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    (tmp_path / "metadata.jsonl").write_text(text, encoding="utf-8")
    assert load_examples(tmp_path) == [
        TrainingExample(tmp_path / "img" / "1.png", "one"),
        TrainingExample(tmp_path / "img" / "2.png", "two"),
    ]


@pytest.mark.parametrize(
    ("line", "error", "message"),
    [
        ("{not json", UsageError, "line 2 is not valid JSON"),
        ('["a.png"]', UsageError, "line 2 must be a JSON object"),
        ('{"text": "x"}', UsageError, "line 2 needs a 'file_name'"),
        ('{"file_name": "a.png"}', UsageError, "line 2 needs a 'text'"),
        ('{"file_name": "gone.png", "text": "x"}', ModelNotFoundError, "line 2 names gone.png"),
    ],
)
def test_bad_metadata_lines_are_named(
    tmp_path: Path, line: str, error: type[Exception], message: str
) -> None:
    _png(tmp_path / "a.png")
    first = json.dumps({"file_name": "a.png", "text": "ok"})
    (tmp_path / "metadata.jsonl").write_text(f"{first}\n{line}\n", encoding="utf-8")
    with pytest.raises(error, match=message):
        load_examples(tmp_path)


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist") as caught:
        load_examples(tmp_path / "nope")
    assert caught.value.exit_code == 3
    with pytest.raises(ModelNotFoundError, match="not a folder"):
        load_examples(_png(tmp_path / "x.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no images"):
        load_examples(tmp_path / "empty")


def test_hf_dataset_without_the_datasets_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(UsageError, match=r"needs the 'datasets' package: pip install 'sdxs-rt\["):
        load_hf_dataset(tmp_path)
    with pytest.raises(ModelNotFoundError):
        load_hf_dataset(tmp_path / "nope")


def test_default_buckets_are_the_trained_ones() -> None:
    buckets = make_buckets()
    expected = {(576, 576)} | {(576, s) for s in (320, 384, 448, 512)}
    expected |= {(s, 576) for s in (320, 384, 448, 512)}
    assert {(b.width, b.height) for b in buckets} == expected
    assert len(buckets) == 9
    assert buckets[:3] == [Bucket(576, 576), Bucket(576, 512), Bucket(512, 576)]
    with pytest.raises(UsageError):
        make_buckets(long_side=500)
    with pytest.raises(UsageError):
        make_buckets(min_side=640)


@pytest.mark.parametrize(
    ("size", "bucket"),
    [
        ((1024, 1024), Bucket(576, 576)),
        ((2000, 1000), Bucket(576, 320)),
        ((1000, 2000), Bucket(320, 576)),
        ((1200, 1000), Bucket(576, 512)),
        ((768, 1024), Bucket(448, 576)),
        ((1920, 1080), Bucket(576, 320)),
    ],
)
def test_assignment_by_aspect_ratio(size: tuple[int, int], bucket: Bucket) -> None:
    assert assign_bucket(*size, make_buckets()) == bucket


def test_small_images_shrink_the_bucket_unless_upscaling_is_allowed() -> None:
    buckets = make_buckets()
    assert assign_bucket(300, 300, buckets) == Bucket(256, 256)
    assert assign_bucket(300, 300, buckets, allow_upscale=True) == Bucket(576, 576)
    small_wide = assign_bucket(400, 220, buckets)
    assert small_wide is not None
    assert small_wide.width <= 400 and small_wide.height <= 220
    assert small_wide.width % 64 == 0 and small_wide.height % 64 == 0
    assert small_wide.width > small_wide.height
    assert assign_bucket(63, 200, buckets) is None
    assert assign_buckets([(64, 64), (40, 40)]) == [Bucket(64, 64), None]


@pytest.mark.parametrize("size", [(1000, 700), (577, 321), (576, 576), (3000, 900)])
def test_resize_and_crop_gives_the_bucket_size(size: tuple[int, int]) -> None:
    image = Image.new("RGB", size)
    bucket = assign_bucket(*size, make_buckets())
    assert bucket is not None
    assert resize_and_crop(image, bucket).size == (bucket.width, bucket.height)


def test_resize_and_crop_never_upscales_unless_asked() -> None:
    image = Image.new("RGB", (300, 300))
    with pytest.raises(UsageError, match="upscaling is not allowed"):
        resize_and_crop(image, Bucket(576, 576))
    assert resize_and_crop(image, Bucket(576, 320), allow_upscale=True).size == (576, 320)


def _assignments() -> list[Bucket | None]:
    sizes = [(1000, 1000), (2000, 1000), (1000, 2000), (40, 40)] * 5 + [(1200, 1000)] * 3
    return assign_buckets(sizes)


def test_group_by_bucket_skips_unassigned() -> None:
    groups = group_by_bucket(_assignments())
    assert sum(len(v) for v in groups.values()) == 18
    assert groups[Bucket(576, 576)] == [0, 4, 8, 12, 16]


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_share_one_bucket_and_cover_each_index_once(drop_last: bool) -> None:
    assignments = _assignments()
    batches = list(bucket_batches(assignments, batch_size=2, seed=7, drop_last=drop_last))
    for batch in batches:
        assert len({assignments[i] for i in batch}) == 1
        assert len(batch) == 2 or not drop_last
    counts = Counter(i for batch in batches for i in batch)
    assert set(counts.values()) == {1}
    usable = {i for i, b in enumerate(assignments) if b is not None}
    if drop_last:
        assert len(usable) - len(counts) == 4  # one leftover in each of the four buckets
    else:
        assert set(counts) == usable


def test_batches_are_deterministic_by_seed() -> None:
    assignments = _assignments()
    first = list(bucket_batches(assignments, 2, seed=1))
    assert first == list(bucket_batches(assignments, 2, seed=1))
    assert first != list(bucket_batches(assignments, 2, seed=2))
    with pytest.raises(UsageError, match="batch size"):
        bucket_batches(assignments, 0, seed=1)
