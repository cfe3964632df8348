"""TensorRT backend: engine cache, environment checks, profiles, builder and runtime logic.

TensorRT is not installed where these tests run: a fake `tensorrt` module (tests/fake_tensorrt.py,
injected into sys.modules) plays TensorRT 11.x or 10.x and decides, as the real builder does,
what precision an engine computes in; the builder tests run on both. The tests marked `tensorrt`
and `gpu` need the real thing (deselected by default; selected, they fail without it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdxs_rt.backends.tensorrt import builder as builder_module
from sdxs_rt.backends.tensorrt import cache, profile
from sdxs_rt.backends.tensorrt.build_mode import FP16_FLAG, LEGACY_WEAKLY_TYPED, STRONGLY_TYPED
from sdxs_rt.backends.tensorrt.cache import EngineKey
from sdxs_rt.backends.tensorrt.environment import Environment, check_engine
from sdxs_rt.backends.tensorrt.selection import EngineQuery, select_engine
from sdxs_rt.commands import engine as commands
from sdxs_rt.errors import DeviceError, EngineError, ModelNotFoundError, UsageError
from sdxs_rt.graphs import (
    GraphEntry,
    Manifest,
    SizeProfile,
    graph_specs,
    profile_shapes,
    read_manifest,
    write_manifest,
)
from tests.fake_tensorrt import (
    FOREIGN_PLAN,
    IMAGE_SIZE,
    RELEASES,
    SMALL,
    TEXT_WIDTH,
    TRT_10,
    TRT_11,
    FakeConfig,
    FakeEngine,
    FakeTimingCache,
    FakeTrt,
    Release,
    engine_bytes,
    fake_specs,
    onnx_facts,
    read_engine,
    standin_graph,
)
from tests.tiny_tokenizer import tiny_tokenizer_dir

REPO = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = tiny_tokenizer_dir()
HERE = Environment("10.0.1", "12.4", "Test GPU", "8.9", "Linux-x86_64")


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def engine_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "engines"
    monkeypatch.setenv("SDXS_RT_ENGINE_CACHE", str(folder))
    return folder


def write_exported_folder(folder: Path, precision: str = "fp16") -> Path:
    """A folder as `sdxs-rt export onnx --precision P` writes it, with stand-in graph files:
    all five graphs, the image encoder's taking IMAGE_SIZE images as its `image_preprocessor`
    says (the export of a text encoder with a vision tower).

    fp16 keeps the VAE graphs in fp32, as the exporter does when fp16 loses the image.
    """
    from sdxs_rt.image_preprocess import ImagePreprocessor

    folder.mkdir(parents=True)
    shutil.copytree(TINY_TOKENIZER, folder / "tokenizer")
    graphs = {}
    for name, spec in fake_specs().items():
        graph_precision = "fp32" if name.startswith("vae") else precision
        path = folder / spec.file
        path.parent.mkdir()
        path.write_bytes(standin_graph(name, graph_precision))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        graphs[name] = GraphEntry(spec.file, graph_precision, digest, [], [])
    manifest = Manifest(
        model={"name": "tiny", "hash": "abc1234567"},
        precision=precision,
        opset=17,
        latent_channels=16,
        vae_scale_factor=8,
        text_width=TEXT_WIDTH,
        latent_scaling={"scaling_factor": 1.0, "mean": 0.0, "std": 1.0},
        scheduler_config={"_class_name": "DDPMScheduler", "num_train_timesteps": 1000},
        tokenizer="tokenizer/tokenizer.json",
        graphs=graphs,
        image_preprocessor=ImagePreprocessor(*IMAGE_SIZE).to_dict(),
    )
    write_manifest(folder, manifest)
    return folder


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """An fp16 export (its VAE graphs fp32)."""
    return write_exported_folder(tmp_path / "exported")


@pytest.fixture
def exported_fp32(tmp_path: Path) -> Path:
    """An export with the default precision, fp32."""
    return write_exported_folder(tmp_path / "exported-fp32", "fp32")


def install(monkeypatch: pytest.MonkeyPatch, release: Release, **options: Any) -> FakeTrt:
    """Make `import tensorrt` return a fake of `release`."""
    fake = FakeTrt(release, **options)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    return fake


@pytest.fixture(params=sorted(RELEASES))
def fake_trt(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> FakeTrt:
    """Each test that takes it runs on a fake TensorRT 10.x and on a fake 11.x."""
    return install(monkeypatch, RELEASES[request.param])


@pytest.fixture
def here(fake_trt: FakeTrt, monkeypatch: pytest.MonkeyPatch) -> Environment:
    """This machine, as the builder sees it: a GPU, and the fake's TensorRT version."""
    machine = replace(HERE, tensorrt_version=fake_trt.release.version)
    monkeypatch.setattr(builder_module, "current_environment", lambda index=0: machine)
    return machine


def make_key(**changes: Any) -> EngineKey:
    key = EngineKey(
        "0" * 64, "fp16", SizeProfile(), "10.0.1", "8.9", "Linux-x86_64", STRONGLY_TYPED
    )
    return replace(key, **changes)


def sidecar_for(key: EngineKey, graph: str = "unet", **extra: Any) -> dict[str, Any]:
    return {"graph": graph, "digest": key.digest, "key": key.to_dict(), **extra}


# --- cache: keys, folder, atomic writes, list and clear -------------------------------------


def test_same_key_inputs_give_the_same_digest() -> None:
    assert make_key().digest == make_key().digest
    assert len(make_key().digest) == cache.DIGEST_LENGTH
    assert int(make_key().digest, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "1" * 64},
        {"precision": "fp32"},
        {"profile": SizeProfile(max_size=1024)},
        {"profile": SizeProfile(max_batch=2)},
        {"profile": SizeProfile(opt_size=512)},
        {"tensorrt_version": "10.3.0"},
        {"compute_capability": "8.6"},
        {"os": "Windows-AMD64"},
        {"build_mode": FP16_FLAG},
    ],
)
def test_each_key_component_changes_the_digest(change: dict[str, Any]) -> None:
    assert make_key(**change).digest != make_key().digest


def test_key_round_trips_through_its_dict() -> None:
    key = make_key(profile=SMALL)
    assert EngineKey.from_dict(json.loads(json.dumps(key.to_dict()))) == key


def test_a_key_from_before_build_modes_reads_as_weakly_typed(engine_dir: Path) -> None:
    """Sidecars written before the mode was recorded still load, list and clear."""
    old = {k: v for k, v in make_key().to_dict().items() if k != "build_mode"}
    engine_dir.mkdir()
    (engine_dir / "0123456789abcdef.engine").write_bytes(b"plan")
    (engine_dir / "0123456789abcdef.json").write_text(json.dumps({"graph": "unet", "key": old}))
    [listed] = cache.list_engines()
    assert listed.key.build_mode == LEGACY_WEAKLY_TYPED
    assert commands.engine_row(listed)["build_mode"] == LEGACY_WEAKLY_TYPED


def test_cache_dir_prefers_the_engine_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDXS_RT_ENGINE_CACHE", "/x/engines-here")
    monkeypatch.setenv("SDXS_RT_CACHE", "/y/cache")
    assert cache.engine_cache_dir() == Path("/x/engines-here")


def test_cache_dir_under_the_sdxs_rt_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDXS_RT_ENGINE_CACHE", raising=False)
    monkeypatch.setenv("SDXS_RT_CACHE", "/y/cache")
    assert cache.engine_cache_dir() == Path("/y/cache/engines")


def test_cache_dir_falls_back_to_the_platform_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDXS_RT_ENGINE_CACHE", raising=False)
    monkeypatch.delenv("SDXS_RT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    if sys.platform.startswith("linux"):
        assert cache.engine_cache_dir() == Path("/xdg/sdxs-rt/engines")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("LOCALAPPDATA", "/local")
    assert cache.platform_cache_dir("linux") == Path.home() / ".cache"
    assert cache.platform_cache_dir("win32") == Path("/local")
    assert cache.platform_cache_dir("darwin") == Path.home() / "Library" / "Caches"


def test_store_then_find_and_list(engine_dir: Path) -> None:
    key = make_key()
    stored = cache.store_engine(key, b"plan", {"graph": "unet", "built_at": "2025-01-01"})
    assert stored.engine_path == engine_dir / f"{key.digest}.engine"
    assert stored.engine_path.read_bytes() == b"plan"
    sidecar = json.loads(stored.sidecar_path.read_text())
    assert sidecar["key"] == key.to_dict() and sidecar["digest"] == key.digest
    found = cache.find_cached(key)
    assert found is not None and found.key == key and found.graph == "unet"
    assert [e.digest for e in cache.list_engines()] == [key.digest]
    assert cache.find_cached(make_key(precision="fp32")) is None


def test_list_is_newest_first_and_skips_broken_entries(engine_dir: Path) -> None:
    old = cache.store_engine(make_key(), b"a", {"built_at": "2024-01-01T00:00:00"})
    new = cache.store_engine(make_key(os="x"), b"b", {"built_at": "2025-01-01T00:00:00"})
    (engine_dir / "deadbeef.json").write_text("{not json")
    (engine_dir / "cafebabe.json").write_text(json.dumps({"no": "key"}))
    orphan_sidecar = cache.store_engine(make_key(os="y"), b"c", {})
    orphan_sidecar.engine_path.unlink()
    assert [e.digest for e in cache.list_engines()] == [new.digest, old.digest]


def test_a_failed_write_leaves_no_engine_and_no_temp_file(
    engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(cache.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        cache.store_engine(make_key(), b"x" * 1000, {})
    assert list(engine_dir.iterdir()) == []


def test_a_failed_sidecar_write_removes_the_engine(
    engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def replace_engines_only(source: str, target: Any) -> None:
        if str(target).endswith(".json"):
            raise OSError("no space for the sidecar")
        real_replace(source, target)

    monkeypatch.setattr(cache.os, "replace", replace_engines_only)
    with pytest.raises(OSError, match="sidecar"):
        cache.store_engine(make_key(), b"plan", {})
    assert list(engine_dir.iterdir()) == []


def test_clear_one_model_or_all(engine_dir: Path) -> None:
    mine = cache.store_engine(make_key(), b"a", {"model": {"hash": "abc1234567"}})
    other = cache.store_engine(make_key(onnx_sha256="f" * 64), b"b", {"model": {"hash": "fff"}})
    (engine_dir / f"{cache.TEMP_PREFIX}x.engine.123").write_bytes(b"half")
    timing = cache.timing_cache_path("10.0.1", "8.9")
    timing.write_bytes(b"timing")
    removed = cache.clear_engines("ABC123")
    assert set(removed) == {mine.engine_path, mine.sidecar_path}
    assert other.engine_path.exists()
    assert cache.clear_engines(other.key.onnx_sha256[:8]) == [other.engine_path, other.sidecar_path]
    cache.clear_engines()
    assert [p.name for p in engine_dir.iterdir()] == [timing.name]


def test_timing_cache_is_per_tensorrt_version_and_gpu_kind(engine_dir: Path) -> None:
    path = cache.timing_cache_path("10.0.1", "8.9")
    assert path.parent == engine_dir
    assert path != cache.timing_cache_path("10.3.0", "8.9")
    assert path != cache.timing_cache_path("10.0.1", "9.0")


# --- environment: stale and foreign engines -------------------------------------------------


def test_an_engine_built_here_passes_the_check() -> None:
    key = make_key()
    assert check_engine(sidecar_for(key), HERE, onnx_sha256=key.onnx_sha256) is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"tensorrt_version": "8.6.1"}, "TensorRT 8.6.1 (this machine: 10.0.1)"),
        ({"compute_capability": "7.5"}, "GPU compute capability 7.5 (this machine: 8.9)"),
        ({"os": "Windows-AMD64"}, "OS Windows-AMD64 (this machine: Linux-x86_64)"),
    ],
)
def test_a_foreign_engine_is_named_with_what_differs(change: dict[str, str], words: str) -> None:
    message = check_engine(sidecar_for(make_key(**change)), HERE, model_dir="/m/sdxs-onnx")
    assert message is not None
    assert words in message and "stale or foreign" in message
    assert message.endswith("rebuild with `sdxs-rt engine build --model /m/sdxs-onnx`")


def test_an_engine_of_an_older_export_is_stale() -> None:
    message = check_engine(sidecar_for(make_key()), HERE, onnx_sha256="9" * 64)
    assert message is not None and "exported again" in message and "--model DIR" in message


def test_require_gpu_names_what_is_missing() -> None:
    from sdxs_rt.backends.tensorrt.environment import require_gpu

    with pytest.raises(DeviceError, match=r"pip install 'sdxs-rt\[tensorrt\]'"):
        require_gpu(replace(HERE, tensorrt_version=None))
    with pytest.raises(DeviceError, match="no CUDA device is visible"):
        require_gpu(replace(HERE, compute_capability=None))


def test_current_environment_without_tensorrt_or_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from sdxs_rt.backends.tensorrt import environment

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    monkeypatch.setattr(environment, "_cuda_driver", lambda: None)
    found = environment.current_environment()
    assert found.tensorrt_version is None
    assert found.os == environment.os_name() and found.os
    assert environment.current_environment().to_dict()["os"] == found.os


def test_engines_built_under_tensorrt_10_are_foreign_under_11(
    exported: Path, engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upgrade `tensorrt>=10` gets today: the old engines are refused, a rebuild works."""
    from sdxs_rt.backends.tensorrt import environment

    gpu = environment.GpuFacts("Test GPU", "8.9", "12.4")
    monkeypatch.setattr(environment, "gpu_facts", lambda index=0: gpu)
    install(monkeypatch, TRT_10)
    builder_module.build_engines(exported, SMALL)
    install(monkeypatch, TRT_11)
    with pytest.raises(EngineError) as caught:
        select_engine(query_for(exported, "unet"), environment.current_environment())
    assert f"TensorRT {TRT_10.version} (this machine: {TRT_11.version})" in str(caught.value)
    builder_module.build_engines(exported, SMALL)
    rebuilt = select_engine(query_for(exported, "unet"), environment.current_environment())
    assert rebuilt.key.tensorrt_version == TRT_11.version


# --- profiles and request validation --------------------------------------------------------


def test_profile_shapes_per_graph() -> None:
    specs = graph_specs(16, 1152)
    text = profile_shapes(specs["text_encoder"], SizeProfile())
    assert text["input_ids"] == ((1, 1), (1, 77), (1, 512))
    assert text["attention_mask"] == text["input_ids"]
    unet = profile_shapes(specs["unet"], SizeProfile())
    # the default fits 8 GB cards: batch 1 at guidance <= 1, the CFG pair of one image
    # otherwise, tuned for 576x576 and up to 768 px per side
    assert unet["sample"] == ((1, 16, 40, 40), (2, 16, 72, 72), (2, 16, 96, 96))
    assert unet["timestep"] == ((1,), (2,), (2,))
    assert unet["encoder_hidden_states"] == ((1, 1, 1152), (2, 1, 1152), (2, 1, 1152))
    vae = profile_shapes(specs["vae_decoder"], SizeProfile())
    assert vae["latent_sample"] == ((1, 16, 40, 40), (1, 16, 72, 72), (1, 16, 96, 96))
    bigger = profile_shapes(specs["unet"], SizeProfile(max_size=1024, max_batch=4))
    assert bigger["sample"][2] == (8, 16, 128, 128)  # the former default, now a build option


def test_validate_request_accepts_what_the_profile_covers() -> None:
    profile.validate_request(SizeProfile(), 576, 576, 1)
    profile.validate_request(SizeProfile(), 320, 768, 1)


@pytest.mark.parametrize(
    ("size", "batch", "words"),
    [
        ((576, 1024), 1, "576x1024 is outside this engine's profile (320..768 px per side, "
         "batch 1); rebuild with `sdxs-rt engine build --model DIR --max-size 1024`"),
        ((256, 576), 1, "--min-size 256"),
        ((576, 576), 6, "576x576 with batch 6 is outside"),
        ((576, 576), 6, "--max-batch 6"),
        ((576, 576), 2, "576x576 with batch 2 is outside"),
    ],
)  # fmt: skip
def test_validate_request_refuses_and_names_the_covered_sizes(
    size: tuple[int, int], batch: int, words: str
) -> None:
    with pytest.raises(UsageError) as caught:
        profile.validate_request(SizeProfile(), size[0], size[1], batch)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (SizeProfile(min_size=640, opt_size=576), "min <= opt <= max"),
        (SizeProfile(max_size=1000), "multiples of 64"),
        (SizeProfile(max_batch=0, opt_batch=0, min_batch=0), "batch sizes"),
    ],
)
def test_check_profile_refuses_nonsense(bad: SizeProfile, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        profile.check_profile(bad)


def test_common_profile_is_what_every_engine_covers() -> None:
    wide = SizeProfile(max_size=1024, max_batch=4)
    common = profile.common_profile([wide, replace(SMALL, max_size=768)])
    assert (common.min_size, common.max_size, common.max_batch) == (320, 768, 2)
    assert common.min_size <= common.opt_size <= common.max_size


def test_check_size_reads_the_components_info() -> None:
    components = types.SimpleNamespace(info={"engine_profile": profile.profile_info(SMALL)})
    profile.check_size(components, 128, 64, 2)
    with pytest.raises(UsageError, match=r"64\.\.128 px per side"):
        profile.check_size(components, 192, 64, 1)
    profile.check_size(types.SimpleNamespace(info={"backend": "torch"}), 4096, 4096, 64)


def test_check_size_for_model_uses_the_manifest_engines(exported: Path) -> None:
    profile.check_size_for_model(exported, 4096, 4096, 99)  # nothing built yet: quiet
    manifest = read_manifest(exported)
    manifest.engines["unet"] = {"profile": profile.profile_info(SMALL)}
    write_manifest(exported, manifest)
    with pytest.raises(UsageError, match="256x64 is outside"):
        profile.check_size_for_model(exported, 256, 64, 1)
    # the VAE encoder's engine says nothing about text-to-image sizes (as in the loader)
    manifest.engines["vae_encoder"] = {"profile": profile.profile_info(replace(SMALL, max_size=64))}
    # nor does the image encoder's (one image size; its batches are not text-to-image's)
    manifest.engines["image_encoder"] = {
        "profile": profile.profile_info(replace(SMALL, max_batch=1))
    }
    write_manifest(exported, manifest)
    profile.check_size_for_model(exported, 128, 64, 2)


# --- builder (fake TensorRT 10.x and 11.x) --------------------------------------------------


def built(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """graph -> what its engine file says was built."""
    return {read_engine(path)["graph"]: read_engine(path) for path in paths}


def test_fp16_engines_from_fp16_graphs_are_strongly_typed(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    paths = builder_module.build_engines(exported, SMALL)
    assert [p.parent for p in paths] == [engine_dir] * 5
    engines = built(paths)
    # text-to-image first, then the VAE encoder (img2img) and the image encoder (image prompts),
    # which an fp16 export of a text encoder with a vision tower has too
    assert list(engines) == [*builder_module.RUNTIME_GRAPHS, "vae_encoder", "image_encoder"]
    assert list(engines) == list(builder_module.ENGINE_GRAPHS)
    assert all(engine["strongly_typed"] for engine in engines.values())
    # the exporter's fp32 VAE stays fp32: a strongly typed engine runs the graph's own dtypes
    precisions = {graph: engine["precision"] for graph, engine in engines.items()}
    assert precisions == {
        "text_encoder": "fp16",
        "unet": "fp16",
        "vae_decoder": "fp32",
        "vae_encoder": "fp32",
        "image_encoder": "fp16",
    }
    specs = fake_specs()
    for graph, engine in engines.items():
        size_profile = SMALL if graph != "image_encoder" else profile.image_encoder_profile(SMALL)
        expected = profile_shapes(specs[graph], size_profile)
        assert engine["profiles"] == [{k: [list(s) for s in v] for k, v in expected.items()}]
        assert engine["workspace"] is None


def test_the_encoder_engine_takes_every_image_the_decoder_makes(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    """img2img and the pixel hires fix encode images of the sizes text-to-image decodes."""
    engines = built(builder_module.build_engines(exported, replace(SMALL, opt_size=128)))
    [decoder_profile] = engines["vae_decoder"]["profiles"]
    [encoder_profile] = engines["vae_encoder"]["profiles"]
    decoded = [[b, 3, 8 * h, 8 * w] for b, _, h, w in decoder_profile["latent_sample"]]
    assert encoder_profile == {"sample": decoded}
    assert decoded == [[1, 3, 64, 64], [1, 3, 128, 128], [2, 3, 128, 128]]


def test_the_image_encoder_engine_takes_its_one_image_size_in_batches_up_to_the_max(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    """SigLIP resizes every image prompt to the manifest's size, and the pipeline encodes them
    one at a time: batch 1 (also when the build's min batch is larger) up to the max batch."""
    batches = replace(SMALL, min_batch=2, opt_batch=2, max_batch=3)
    engines = built(builder_module.build_engines(exported, batches))
    [image_profile] = engines["image_encoder"]["profiles"]
    assert read_manifest(exported).image_preprocessor["size"] == {"height": 36, "width": 36}
    assert image_profile == {"pixel_values": [[1, 3, 36, 36], [1, 3, 36, 36], [3, 3, 36, 36]]}
    [unet_profile] = engines["unet"]["profiles"]  # the build's own batches are unchanged
    assert [shape[0] for shape in unet_profile["sample"]] == [2, 4, 6]


def test_fp16_engines_from_fp32_graphs_use_the_fp16_flag_on_tensorrt_10(
    exported_fp32: Path, engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch, TRT_10)
    monkeypatch.setattr(builder_module, "current_environment", lambda index=0: HERE)
    paths = builder_module.build_engines(exported_fp32, SMALL)
    engines = built(paths).values()
    assert [(e["precision"], e["strongly_typed"]) for e in engines] == [("fp16", False)] * 5
    sidecar = json.loads(paths[1].with_suffix(".json").read_text())
    assert sidecar["key"]["build_mode"] == FP16_FLAG


def test_fp16_engines_from_fp32_graphs_are_refused_on_tensorrt_11(
    exported_fp32: Path, engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch, TRT_11)
    monkeypatch.setattr(builder_module, "current_environment", lambda index=0: HERE)
    with pytest.raises(UsageError) as caught:
        builder_module.build_engines(exported_fp32, SMALL)
    assert str(caught.value) == (
        f"{exported_fp32} holds fp32 ONNX graphs, and TensorRT {TRT_11.version} builds fp16 "
        "engines from fp16 graphs only (strong typing; BuilderFlag.FP16 is gone): export them "
        f"with `sdxs-rt export onnx --model tiny --precision fp16 --out {exported_fp32}-fp16` "
        "and build from that folder, or pass --precision fp32"
    )
    assert not engine_dir.exists() or not any(engine_dir.glob("*.engine"))


def test_fp32_engines_from_fp32_graphs_with_a_workspace_limit(
    fake_trt: FakeTrt, exported_fp32: Path, engine_dir: Path, here: Environment
) -> None:
    paths = builder_module.build_engines(exported_fp32, SMALL, "fp32", workspace_bytes=1 << 30)
    for engine in built(paths).values():
        assert (engine["precision"], engine["strongly_typed"]) == ("fp32", True)
        assert engine["workspace"] == 1 << 30


def test_fp32_engines_from_fp16_graphs_are_refused(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    with pytest.raises(UsageError) as caught:
        builder_module.build_engines(exported, SMALL, "fp32")
    message = str(caught.value)
    assert message.startswith(f"{exported} holds fp16 ONNX graphs, which TensorRT builds into")
    assert f"--model tiny --precision fp32 --out {exported}-fp32`" in message
    assert message.endswith("or pass --precision fp16")


def test_a_tensorrt_without_strong_typing_is_refused(
    exported: Path, engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ancient = Release("8.6.1", {"EXPLICIT_BATCH": 0}, ("FP16",), always_strongly_typed=False)
    install(monkeypatch, ancient)
    with pytest.raises(DeviceError, match=r"TensorRT 8\.6\.1 has no strongly typed networks"):
        builder_module.build_engines(exported, SMALL)


def test_build_reports_progress_phases(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    events: list[builder_module.BuildEvent] = []
    builder_module.build_engines(exported, SMALL, progress=events.append)
    unet = [(e.kind, e.phase) for e in events if e.graph == "unet"]
    assert unet == [
        ("start", ""),
        ("phase_start", "Building engine"),
        ("phase_start", "Tactic search"),
        ("step", "Building engine"),
        ("phase_finish", "Tactic search"),
        ("phase_finish", "Building engine"),
        ("done", ""),
    ]
    first = next(e for e in events if e.kind == "phase_start")
    assert (first.parent, first.total) == (None, 2)


def test_each_build_starts_from_the_last_timing_cache(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    builder_module.build_engines(exported, SMALL)
    timing = cache.timing_cache_path(here.tensorrt_version or "", "8.9")
    assert timing.read_bytes() == b"+measured" * 5  # each of the five builds added to it


def test_an_unusable_timing_cache_is_started_afresh(
    fake_trt: FakeTrt,
    exported: Path,
    engine_dir: Path,
    here: Environment,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timing = cache.timing_cache_path(here.tensorrt_version or "", "8.9")
    engine_dir.mkdir()
    timing.write_bytes(b"from another gpu")
    monkeypatch.setattr(FakeConfig, "set_timing_cache", rejecting_set_timing_cache)
    builder_module.build_engines(exported, SMALL)
    assert timing.read_bytes() == b"+measured"


def rejecting_set_timing_cache(
    self: FakeConfig, cache: FakeTimingCache, ignore_mismatch: bool
) -> bool:
    self.timing_cache = cache
    return cache.data == b""


def test_build_records_sidecars_and_the_manifest(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    paths = builder_module.build_engines(exported, SMALL)
    sidecar = json.loads(paths[1].with_suffix(".json").read_text())
    assert sidecar["graph"] == "unet" and sidecar["graph_precision"] == "fp16"
    assert sidecar["key"]["precision"] == "fp16"
    assert sidecar["key"]["build_mode"] == STRONGLY_TYPED
    assert sidecar["key"]["profile"]["max_size"] == 128
    assert sidecar["key"]["onnx_sha256"] == read_manifest(exported).graphs["unet"].sha256
    assert sidecar["environment"] == here.to_dict()
    assert sidecar["model"] == {"name": "tiny", "hash": "abc1234567"}
    assert sidecar["built_at"] and sidecar["sdxs_rt_version"] and sidecar["profile"]
    engines = read_manifest(exported).engines
    assert sorted(engines) == sorted(builder_module.ENGINE_GRAPHS)
    assert engines["unet"]["digest"] == paths[1].stem
    assert engines["vae_encoder"]["digest"] == paths[3].stem
    assert engines["vae_encoder"]["graph_precision"] == "fp32"
    assert engines["vae_encoder"]["profile"] == engines["vae_decoder"]["profile"]
    assert engines["image_encoder"]["digest"] == paths[4].stem
    assert engines["image_encoder"]["graph_precision"] == "fp16"
    assert engines["unet"]["key"]["build_mode"] == STRONGLY_TYPED
    assert engines["vae_decoder"]["graph_precision"] == "fp32"
    assert engines["unet"]["environment"]["gpu_name"] == "Test GPU"
    assert engines["unet"]["file"] == str(paths[1])


def test_cached_engines_are_skipped_unless_forced(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    first = builder_module.build_engines(exported, SMALL)
    events: list[builder_module.BuildEvent] = []
    again = builder_module.build_engines(exported, SMALL, progress=events.append)
    assert again == first and len(first) == 5
    assert [(e.graph, e.kind) for e in events] == [
        (graph, "skip") for graph in builder_module.ENGINE_GRAPHS
    ]  # nothing built the second time: no start, phase or done event
    events.clear()
    builder_module.build_engines(exported, SMALL, force=True, progress=events.append)
    assert [e.kind for e in events if e.kind in ("skip", "done")] == ["done"] * 5
    other = builder_module.build_engines(exported, replace(SMALL, max_batch=1))
    assert set(other).isdisjoint(first)  # another profile is another engine


def test_a_static_scalar_timestep_gets_no_profile(
    exported: Path, engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch, TRT_11, scalar_timestep=True)
    monkeypatch.setattr(builder_module, "current_environment", lambda index=0: HERE)
    unet = built(builder_module.build_engines(exported, SMALL))["unet"]
    assert sorted(unet["profiles"][0]) == ["encoder_hidden_states", "sample"]


def test_parse_errors_are_listed(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    fake_trt.parse_errors = ["In node 3 (Conv): bad weights", "In node 9: unsupported op"]
    with pytest.raises(EngineError) as caught:
        builder_module.build_engines(exported, SMALL)
    message = str(caught.value)
    assert "could not parse" in message and "text_encoder/model.onnx" in message
    assert "bad weights; In node 9: unsupported op" in message
    assert caught.value.exit_code == 6


def test_a_failed_build_writes_nothing(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    fake_trt.build_result = None
    with pytest.raises(EngineError, match="could not build the text_encoder engine"):
        builder_module.build_engines(exported, SMALL)
    assert not any(engine_dir.glob("*.engine"))
    assert read_manifest(exported).engines == {}


def test_a_progress_callback_can_cancel_the_build(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    def cancel_on_first_step(event: builder_module.BuildEvent) -> bool:
        return event.kind != "step"

    with pytest.raises(EngineError, match="cancelled"):
        builder_module.build_engines(exported, SMALL, progress=cancel_on_first_step)


def test_a_failing_progress_callback_does_not_break_the_build(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    def broken(event: builder_module.BuildEvent) -> None:
        if event.kind == "step":
            raise RuntimeError("oops")

    assert len(builder_module.build_engines(exported, SMALL, progress=broken)) == 5


def test_missing_tensorrt_is_a_device_error(
    exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(DeviceError) as caught:
        builder_module.build_engines(exported)
    assert str(caught.value) == (
        "TensorRT is not installed; pip install 'sdxs-rt[tensorrt]' on a machine with an NVIDIA GPU"
    )
    assert caught.value.exit_code == 4


def test_build_without_a_gpu_is_a_device_error(
    fake_trt: FakeTrt, exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_gpu = replace(HERE, compute_capability=None, gpu_name=None)
    monkeypatch.setattr(builder_module, "current_environment", lambda index=0: no_gpu)
    with pytest.raises(DeviceError, match="no CUDA device"):
        builder_module.build_engines(exported)


def test_build_checks_its_request_first(fake_trt: FakeTrt, exported: Path) -> None:
    with pytest.raises(UsageError, match="fp16 or fp32"):
        builder_module.build_engines(exported, precision="bf16")
    with pytest.raises(UsageError, match="multiples of 64"):
        builder_module.build_engines(exported, SizeProfile(max_size=1000))
    with pytest.raises(ModelNotFoundError, match=r"manifest\.json"):
        builder_module.build_engines(exported.parent / "nowhere")


def test_a_missing_graph_file_is_named(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    (exported / "unet" / "model.onnx").unlink()
    with pytest.raises(ModelNotFoundError, match=r"unet/model.onnx is missing"):
        builder_module.build_engines(exported, SMALL)


@pytest.fixture(scope="module")
def real_exported(exported_tiny_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model exported by `export/` (the builder writes to its manifest)."""
    return Path(shutil.copytree(exported_tiny_fp32, tmp_path_factory.mktemp("trt") / "exported"))


def test_the_profiles_fit_the_graphs_export_writes(
    real_exported: Path, fake_trt: FakeTrt, engine_dir: Path, here: Environment
) -> None:
    """Every dynamic input of the real graphs gets a profile of its rank and static dims."""
    engines = built(builder_module.build_engines(real_exported, SMALL, "fp32"))
    for graph, engine in engines.items():
        assert engine["precision"] == "fp32"
        facts = onnx_facts(real_exported / graph / "model.onnx")
        assert facts is not None
        dims, [shapes] = facts[0], engine["profiles"]
        assert sorted(shapes) == sorted(dims)
        for name, triple in shapes.items():
            for shape in triple:
                assert len(shape) == len(dims[name])
                assert all(d < 0 or d == s for d, s in zip(dims[name], shape, strict=True))


# --- selecting the engine to load -----------------------------------------------------------


def built_key(exported: Path, graph: str, **changes: Any) -> EngineKey:
    sha = read_manifest(exported).graphs[graph].sha256
    return make_key(**{"onnx_sha256": sha, "profile": SMALL, **changes})


def query_for(exported: Path, graph: str, precision: str = "fp16") -> EngineQuery:
    manifest = read_manifest(exported)
    sha = manifest.graphs[graph].sha256
    return EngineQuery(graph, sha, precision, exported, manifest.engines.get(graph))


def test_select_prefers_the_manifest_engine(exported: Path, engine_dir: Path) -> None:
    newer = cache.store_engine(built_key(exported, "unet", profile=SizeProfile()), b"1", {
        "graph": "unet", "built_at": "2025-06-01"})  # fmt: skip
    recorded = cache.store_engine(built_key(exported, "unet"), b"2", {
        "graph": "unet", "built_at": "2025-01-01"})  # fmt: skip
    query = query_for(exported, "unet")
    assert select_engine(query, HERE).digest == newer.digest
    query = replace(query, recorded={"digest": recorded.digest})
    assert select_engine(query, HERE).digest == recorded.digest


def test_select_explains_another_precision(exported: Path, engine_dir: Path) -> None:
    cache.store_engine(built_key(exported, "unet"), b"1", {"graph": "unet"})
    with pytest.raises(EngineError) as caught:
        select_engine(query_for(exported, "unet", "fp32"), HERE)
    assert "holds fp16 unet engines" in str(caught.value)
    assert "pass --precision fp16" in str(caught.value)


def test_select_explains_a_foreign_engine(exported: Path, engine_dir: Path) -> None:
    key = built_key(exported, "unet", tensorrt_version="8.6.1")
    cache.store_engine(key, b"1", {"graph": "unet"})
    with pytest.raises(EngineError) as caught:
        select_engine(query_for(exported, "unet"), HERE)
    assert "TensorRT 8.6.1 (this machine: 10.0.1)" in str(caught.value)
    assert f"sdxs-rt engine build --model {exported}" in str(caught.value)


def test_select_explains_a_stale_manifest_record(exported: Path, engine_dir: Path) -> None:
    old = make_key(onnx_sha256="e" * 64, profile=SMALL)
    query = replace(query_for(exported, "unet"), recorded=sidecar_for(old))
    with pytest.raises(EngineError, match="exported again since"):
        select_engine(query, HERE)


def test_select_says_what_to_build_when_nothing_is_there(exported: Path, engine_dir: Path) -> None:
    with pytest.raises(EngineError) as caught:
        select_engine(query_for(exported, "vae_decoder"), HERE)
    assert str(caught.value) == (
        f"there is no TensorRT vae_decoder engine for {exported} in {engine_dir}; "
        f"build it with `sdxs-rt engine build --model {exported}`"
    )


# --- runtime (fake TensorRT on CPU memory) --------------------------------------------------


class FakeStream:
    handle = 1234

    def __init__(self) -> None:
        self.events: list[str] = []

    def before(self) -> None:
        self.events.append("before")

    def after(self) -> None:
        self.events.append("after")

    def capture(self, enqueue: Any) -> Any:
        self.events.append("capture")
        return lambda: enqueue(self.handle)


def fake_engine(fake: FakeTrt, graph: str, cuda_graph: bool = False) -> Any:
    torch = pytest.importorskip("torch")
    from sdxs_rt.backends.tensorrt.runtime import TrtEngine

    engine = FakeEngine(fake, graph)
    return TrtEngine(fake.module, engine, torch.device("cpu"), FakeStream(), cuda_graph)


def test_trt_engine_sets_shapes_binds_buffers_and_runs(fake_trt: FakeTrt) -> None:
    torch = pytest.importorskip("torch")
    engine = fake_engine(fake_trt, "unet")
    sample = torch.randn(2, 16, 8, 8)
    feeds = {
        "sample": sample,
        "timestep": torch.full((2,), 999.0),
        "encoder_hidden_states": torch.zeros(2, 1, TEXT_WIDTH),
    }
    out = engine(feeds)["out_sample"]
    assert torch.equal(out, sample)  # the fake engine copies through the bound addresses
    assert engine.context.executed == [FakeStream.handle]  # on TensorRT's own stream,
    assert engine.stream.events == ["before", "after"]  # ordered after and before torch's


def test_trt_engine_casts_to_the_engine_dtypes(fake_trt: FakeTrt) -> None:
    torch = pytest.importorskip("torch")
    engine = fake_engine(fake_trt, "text_encoder")
    ids = torch.tensor([[0, 5, 2]], dtype=torch.int32)
    out = engine({"input_ids": ids, "attention_mask": torch.ones(1, 3)})["text_embeds"]
    assert engine.dtypes["input_ids"] == torch.int64
    assert out.shape == (1, TEXT_WIDTH) and float(out[0, 0]) == 0.5


def test_trt_engine_refuses_shapes_outside_its_profile(fake_trt: FakeTrt) -> None:
    torch = pytest.importorskip("torch")
    engine = fake_engine(fake_trt, "vae_decoder")
    with pytest.raises(UsageError, match=r"latent_sample of shape 1x16x32x8 is outside"):
        engine({"latent_sample": torch.zeros(1, 16, 32, 8)})
    assert engine.context.executed == []


def test_cuda_graph_is_captured_once_per_shape(fake_trt: FakeTrt) -> None:
    torch = pytest.importorskip("torch")
    engine = fake_engine(fake_trt, "unet", cuda_graph=True)

    def run(batch: int, size: int, value: float) -> Any:
        feeds = {
            "sample": torch.full((batch, 16, size, size), value),
            "timestep": torch.full((batch,), 1.0),
            "encoder_hidden_states": torch.zeros(batch, 1, TEXT_WIDTH),
        }
        return engine(feeds)["out_sample"]

    assert float(run(1, 8, 1.0).mean()) == 1.0
    assert float(run(1, 8, 2.0).mean()) == 2.0  # replayed with the new input values
    assert engine.stream.events.count("capture") == 1
    assert float(run(2, 16, 3.0).mean()) == 3.0
    assert engine.stream.events.count("capture") == 2
    assert engine.captured.shapes[0] == (2, 16, 16, 16)


def test_deserialize_checks_the_sidecar_before_tensorrt_runs(
    fake_trt: FakeTrt, engine_dir: Path
) -> None:
    pytest.importorskip("torch")
    from sdxs_rt.backends.tensorrt.runtime import deserialize

    # Deserialising this plan would raise (as a foreign plan may crash TensorRT): refused first.
    foreign = cache.store_engine(make_key(compute_capability="7.5"), FOREIGN_PLAN, {})
    with pytest.raises(EngineError, match=r"compute capability 7\.5"):
        deserialize(fake_trt.module, foreign, HERE, "/m")
    damaged = cache.store_engine(make_key(), b"garbage", {"graph": "unet"})
    with pytest.raises(EngineError) as caught:
        deserialize(fake_trt.module, damaged, HERE, "/m")
    assert "could not load the unet engine" in str(caught.value)
    assert "rebuild with `sdxs-rt engine build --model /m`" in str(caught.value)
    runtime, engine = deserialize(fake_trt.module, cache.store_engine(
        make_key(os="Linux-x86_64", precision="fp32"), engine_bytes("unet"), {}), HERE)  # fmt: skip
    assert engine.graph == "unet" and runtime is not None


# --- load_components and the pipeline over fake engines -------------------------------------


def load_on_cpu(monkeypatch: pytest.MonkeyPatch, here: Environment) -> None:
    """The loader runs on CPU memory with fake streams, on this machine as the builder sees it."""
    torch = pytest.importorskip("torch")
    from sdxs_rt.backends.tensorrt import loader, runtime

    monkeypatch.setattr(loader, "current_environment", lambda index=0: here)
    monkeypatch.setattr(loader, "cuda_device", lambda name: torch.device("cpu"))
    monkeypatch.setattr(runtime, "StreamSync", lambda device: FakeStream())


@pytest.fixture
def loadable(
    fake_trt: FakeTrt,
    exported: Path,
    engine_dir: Path,
    here: Environment,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """Engines built (by the fake) for `exported`; the loader runs on CPU with fake streams."""
    load_on_cpu(monkeypatch, here)
    builder_module.build_engines(exported, SMALL)
    return exported


def drop_encoder_graph(folder: Path, unlisted: bool, graph: str = "vae_encoder") -> None:
    """An export made before `export onnx` wrote the VAE encoder (`unlisted`), or one whose
    vae_encoder/ folder is gone while its manifest still lists it. With `graph="image_encoder"`,
    unlisted is an export without a vision tower (no graph, no image_preprocessor)."""
    if unlisted:
        manifest = read_manifest(folder)
        del manifest.graphs[graph]
        if graph == "image_encoder":
            manifest.image_preprocessor = {}
        write_manifest(folder, manifest)
    shutil.rmtree(folder / graph)


@pytest.mark.parametrize(
    ("unlisted", "why"),
    [
        (True, "manifest.json lists no vae_encoder graph (an older export)"),
        (False, "vae_encoder/model.onnx is missing"),
    ],
)
def test_an_export_without_the_encoder_graph_builds_and_loads_without_an_encoder(
    fake_trt: FakeTrt,
    exported: Path,
    engine_dir: Path,
    here: Environment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    unlisted: bool,
    why: str,
) -> None:
    from sdxs_rt.backends.tensorrt import load_components

    drop_encoder_graph(exported, unlisted)
    others = (*builder_module.RUNTIME_GRAPHS, "image_encoder")
    assert builder_module.engine_graphs(exported) == others
    build = engine_cli("engine", "build", "--model", str(exported), "--min-size", "64",
                       "--max-size", "128", "--max-batch", "2")  # fmt: skip
    assert commands.run(build) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 4  # the other four built, the image encoder's included
    assert "image_encoder: wrote" in err and "vae_encoder: wrote" not in err
    [note] = [line for line in err.splitlines() if line.startswith("vae_encoder")]
    assert [line for line in err.splitlines() if "not built" in line] == [note]
    assert note == (
        f"vae_encoder: not built: {exported / why}, so img2img and the pixel hires fix will be "
        "unavailable on TensorRT; export the model again with 'sdxs-rt export onnx' and build "
        "again"
    )
    assert sorted(read_manifest(exported).engines) == sorted(others)
    load_on_cpu(monkeypatch, here)
    components = load_components(str(exported), device="cuda", precision="fp16")
    assert components.vae_encoder is None
    reason = components.info["vae_encoder_unavailable"]
    if unlisted:
        assert reason.startswith(f"{exported / 'manifest.json'} lists no vae_encoder graph")
    else:
        assert reason.startswith(f"{exported / why}, so 'sdxs-rt engine build' builds no")
    assert "export the model again with 'sdxs-rt export onnx'" in reason
    assert sorted(components.info["engines"]) == sorted(others)
    assert components.image_encoder is not None  # image prompts do not need the VAE encoder
    assert components.info["engine_profile"]["description"] == "64..128 px per side, batch 1..2"


def test_engine_graphs_says_what_a_build_will_make(exported: Path, tmp_path: Path) -> None:
    """The desktop's build progress counts these."""
    assert builder_module.engine_graphs(exported) == builder_module.ENGINE_GRAPHS
    assert len(builder_module.ENGINE_GRAPHS) == 5
    assert builder_module.engine_graphs(tmp_path / "nowhere") == builder_module.RUNTIME_GRAPHS
    drop_encoder_graph(exported, unlisted=True)
    assert builder_module.engine_graphs(exported) == (
        *builder_module.RUNTIME_GRAPHS,
        "image_encoder",
    )
    drop_encoder_graph(exported, unlisted=True, graph="image_encoder")
    assert builder_module.engine_graphs(exported) == builder_module.RUNTIME_GRAPHS


def test_load_components_exposes_the_engine_profile(loadable: Path) -> None:
    from sdxs_rt.backends.tensorrt import load_components

    components = load_components(str(loadable), device="cuda", precision="fp16")
    info = components.info
    assert info["backend"] == "tensorrt" and info["model_hash"] == "abc1234567"
    assert info["engine_profile"]["max_size"] == 128
    assert info["engine_profile"]["description"] == "64..128 px per side, batch 1..2"
    assert sorted(info["engines"]) == sorted(builder_module.ENGINE_GRAPHS)
    assert components.vae_encoder is not None and "vae_encoder_unavailable" not in info
    assert components.image_encoder is not None and "image_encoder_unavailable" not in info
    profile.check_size(components, 128, 128, 2)
    with pytest.raises(UsageError, match="outside this engine's profile"):
        profile.check_size(components, 576, 576, 1)


def test_the_pipeline_runs_on_the_components(loadable: Path) -> None:
    from sdxs_rt.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(str(loadable), backend="tensorrt", dtype="fp16")
    result = pipeline("a red circle", width=64, height=128, num_inference_steps=2, seed=1)
    assert result.images[0].size == (64, 128)
    assert np.asarray(result.images[0]).std() == 0  # the fake VAE paints flat 0.5


def test_load_components_refuses_what_it_cannot_load(loadable: Path, tmp_path: Path) -> None:
    from sdxs_rt.backends.tensorrt import load_components

    with pytest.raises(UsageError, match="needs --model"):
        load_components(None)
    with pytest.raises(UsageError, match="takes no --text-encoder"):
        load_components(str(loadable), text_encoder="x")
    with pytest.raises(ModelNotFoundError, match="sdxs-rt export onnx"):
        load_components(str(tmp_path))
    with pytest.raises(EngineError, match="pass --precision fp16"):
        load_components(str(loadable), precision="fp32")
    with pytest.raises(UsageError, match="fp16 or fp32"):
        load_components(str(loadable), precision="bf16")


def test_the_cpu_device_is_refused() -> None:
    pytest.importorskip("torch")
    from sdxs_rt.backends.tensorrt.ops import cuda_device

    with pytest.raises(DeviceError, match="pass --device cuda"):
        cuda_device("cpu")


def test_the_vae_decoder_refuses_nan(fake_trt: FakeTrt) -> None:
    torch = pytest.importorskip("torch")
    from sdxs_rt.backends.tensorrt.wrappers import TrtVAEDecoder

    decoder = TrtVAEDecoder(types.SimpleNamespace(), "/m")  # type: ignore[arg-type]
    decoder.engine = lambda feeds: {"sample": torch.full((1, 3, 8, 8), float("nan"))}  # type: ignore[assignment]
    with pytest.raises(EngineError, match="--model /m --precision fp32"):
        decoder(torch.zeros(1, 16, 1, 1))


# --- tokenizer --------------------------------------------------------------------------------


def test_tokenizer_pads_to_the_longest_prompt_only() -> None:
    from sdxs_rt.prompt_tokenizer import PromptTokenizer

    tokenizer = PromptTokenizer.from_file(TINY_TOKENIZER / "tokenizer.json", max_tokens=8)
    ids, mask = tokenizer(["a red circle", ""])
    assert ids.dtype == mask.dtype == np.int64
    assert ids.shape == mask.shape and ids.shape[1] < 8
    assert mask[0].all() and mask[1].sum() == 2  # "" is <s></s>
    with pytest.warns(UserWarning, match="reads only the first 8"):
        ids, _ = tokenizer(["red " * 20])
    assert ids.shape == (1, 8)


def test_tokenizer_matches_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    from sdxs_rt.prompt_tokenizer import PromptTokenizer

    ours = PromptTokenizer.from_file(TINY_TOKENIZER / "tokenizer.json")
    theirs = transformers.AutoTokenizer.from_pretrained(str(TINY_TOKENIZER))
    prompts = ["a red circle on a blue background", "кот", ""]
    expected = theirs(prompts, padding="longest", truncation=True, max_length=512)
    ids, mask = ours(prompts)
    assert ids.tolist() == expected["input_ids"]
    assert mask.tolist() == expected["attention_mask"]


# --- CLI hooks ----------------------------------------------------------------------------------


def engine_cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdxs-rt")
    subcommands = parser.add_subparsers(dest="command")
    commands.add_parser(subcommands)
    export = subcommands.add_parser("export").add_subparsers(dest="format")
    commands.add_engine_arguments(export.add_parser("tensorrt"))
    return parser.parse_args(argv)


def test_engine_build_and_list(
    fake_trt: FakeTrt,
    exported: Path,
    engine_dir: Path,
    here: Environment,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = engine_cli("export", "tensorrt", "--model", str(exported), "--max-size", "128",
                      "--min-size", "64", "--max-batch", "2")  # fmt: skip
    assert commands.run_export_tensorrt(args) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 5 and "unet: building the TensorRT engine" in err
    assert "vae_encoder: building the TensorRT engine" in err and "not built" not in err
    assert "image_encoder: building the TensorRT engine" in err
    assert "the engines cover 64..128 px per side, batch 1..2" in err
    assert commands.run(engine_cli("engine", "list")) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["KEY", "GRAPH", "MODEL"]
    assert len(table) == 6 and "abc1234567" in table[1] and "64-128px b1-2" in table[1]
    assert "Test GPU (sm 8.9)" in table[1]
    assert commands.run(engine_cli("engine", "list", "--json")) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(row["graph"] for row in rows) == sorted(builder_module.ENGINE_GRAPHS)
    assert rows[0]["tensorrt_version"] == here.tensorrt_version and rows[0]["size_bytes"] > 0
    assert {row["build_mode"] for row in rows} == {STRONGLY_TYPED}


def test_engine_build_again_says_cached_and_clear_removes(
    fake_trt: FakeTrt,
    exported: Path,
    engine_dir: Path,
    here: Environment,
    capsys: pytest.CaptureFixture[str],
) -> None:
    build = engine_cli("engine", "build", "--model", str(exported), "--min-size", "64")
    assert commands.run(build) == 0
    assert capsys.readouterr().err.count("building the TensorRT engine") == 5
    assert commands.run(build) == 0
    err = capsys.readouterr().err
    assert err.count("in the cache") == 5 and "building" not in err
    assert commands.run(engine_cli("engine", "clear", "--model-hash", "nope")) == 0
    assert "removed 0 engine(s)" in capsys.readouterr().err
    assert commands.run(engine_cli("engine", "clear", "--model-hash", "abc")) == 0
    assert "removed 5 engine(s)" in capsys.readouterr().err
    assert commands.run(engine_cli("engine", "list")) == 0
    assert "no engines in" in capsys.readouterr().err


def test_bigger_profiles_than_the_8_gb_default_are_a_build_option() -> None:
    args = engine_cli("engine", "build", "--model", "m", "--max-size", "1024", "--max-batch", "4")
    built = commands.profile_from_args(args)
    assert (built.max_size, built.max_batch, built.opt_size) == (1024, 4, 576)
    assert built.describe() == "320..1024 px per side, batch 1..4"


def test_profile_from_args_moves_the_default_opt_size_into_range() -> None:
    args = engine_cli("engine", "build", "--model", "m", "--max-size", "512")
    assert commands.profile_from_args(args).opt_size == 512
    args = engine_cli("engine", "build", "--model", "m", "--min-size", "640")
    assert commands.profile_from_args(args).opt_size == 640
    with pytest.raises(UsageError, match="multiples of 64"):
        commands.profile_from_args(
            engine_cli("engine", "build", "--model", "m", "--max-size", "1000")
        )
    with pytest.raises(UsageError, match="choose an action"):
        commands.run(engine_cli("engine"))


def test_progress_printer_shows_top_level_phases_only() -> None:
    import io

    stream = io.StringIO()
    printer = commands.ProgressPrinter(stream)
    for event in (
        builder_module.BuildEvent("unet", "start"),
        builder_module.BuildEvent("unet", "phase_start", "Building engine", None, total=2),
        builder_module.BuildEvent("unet", "phase_start", "Inner", "Building engine", total=5),
        builder_module.BuildEvent("unet", "step", "Building engine", step=0),
        builder_module.BuildEvent("unet", "phase_finish", "Building engine"),
        builder_module.BuildEvent("unet", "done", path=Path("/c/x.engine")),
    ):
        printer(event)
    assert stream.getvalue().splitlines() == [
        "unet: building the TensorRT engine (this takes a while)",
        "unet: Building engine",
        "unet: wrote /c/x.engine",
    ]


def test_the_cli_modules_import_neither_torch_nor_tensorrt() -> None:
    code = (
        "import sys, sdxs_rt.commands.engine, sdxs_rt.backends.tensorrt; "
        "print(sorted(m for m in ('torch', 'tensorrt', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- real TensorRT (deselected by default; selected, what they need missing fails them) -----

REAL_TENSORRT_NEEDS = ("tensorrt", "torch", "onnx", "onnxruntime", "diffusers")


def require_tensorrt_and_gpu() -> Any:
    """The real `tensorrt`, or a failure: these tests only run when selected on purpose
    (`pytest -m tensorrt` or `-m gpu`), and a skip there would pass while checking nothing."""
    missing = []
    for name in REAL_TENSORRT_NEEDS:
        try:
            importlib.import_module(name)
        except Exception:  # ImportError, or a wheel whose native libraries do not load
            missing.append(name)
    if missing:
        pytest.fail(
            f"this TensorRT test was selected, but {', '.join(missing)} cannot be imported: "
            "install sdxs-rt[tensorrt,torch,onnx] on a machine with an NVIDIA GPU",
            pytrace=False,
        )
    import torch

    if not torch.cuda.is_available():
        pytest.fail(
            "this TensorRT test was selected, but torch sees no CUDA GPU "
            f"(torch {torch.__version__}, CUDA {torch.version.cuda})",
            pytrace=False,
        )
    return importlib.import_module("tensorrt")


def test_a_selected_tensorrt_test_fails_without_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(pytest.fail.Exception, match="tensorrt cannot be imported"):
        require_tensorrt_and_gpu()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_end_to_end_matches_onnx_runtime(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export the tiny model in fp16, build strongly typed fp16 engines (the VAE and image
    encoders' too), generate, encode an init image and an image prompt, and compare with ONNX
    Runtime running the same graphs on the CPU."""
    require_tensorrt_and_gpu()
    tiny_model = request.getfixturevalue("tiny_model")  # after the check: the fixture skips
    from sdxs_rt_export.onnx_export import export_onnx

    from sdxs_rt.pipeline import Pipeline

    monkeypatch.setenv("SDXS_RT_ENGINE_CACHE", str(tmp_path / "engines"))
    exported = tmp_path / "exported"
    export_onnx(str(tiny_model), exported, precision="fp16")
    small = SizeProfile(min_size=64, opt_size=128, max_size=192, max_batch=2)
    paths = builder_module.build_engines(exported, small, "fp16")
    modes = {json.loads(p.with_suffix(".json").read_text())["key"]["build_mode"] for p in paths}
    assert len(paths) == 5 and modes == {STRONGLY_TYPED}
    options = {"width": 128, "height": 64, "num_inference_steps": 4, "seed": 7}
    trt_pipe = Pipeline.from_pretrained(str(exported), backend="tensorrt", device="cuda",
                                        dtype="fp16")  # fmt: skip
    profile.check_size(trt_pipe.components, 128, 64, 1)
    trt_image = np.asarray(trt_pipe("a red circle", **options).images[0])
    ort_pipe = Pipeline.from_pretrained(str(exported), backend="onnx", dtype="fp16")
    ort_image = np.asarray(ort_pipe("a red circle", **options).images[0])
    assert psnr(trt_image, ort_image) >= 35.0
    # the VAE encoder engine (img2img): the same latents as ONNX Runtime's, within fp16's
    assert "vae_encoder_unavailable" not in trt_pipe.components.info
    init = Image.fromarray(ort_image)
    trt_latents = trt_pipe.encode_image(init).float().cpu().numpy()
    ort_latents = np.asarray(ort_pipe.encode_image(init), dtype=np.float32)
    assert trt_latents.shape == ort_latents.shape == (1, 16, 8, 16)
    relative = np.abs(trt_latents - ort_latents).mean() / np.abs(ort_latents).mean()
    assert relative < 0.02  # ONNX Runtime fp16 graphs vs torch fp32, tiny model: 0.0017
    # the image encoder engine (image prompts), opened on the first one: ONNX Runtime's vectors
    trt_encoder = trt_pipe.components.image_encoder
    assert trt_encoder is not None and "image_encoder_unavailable" not in trt_pipe.components.info
    assert trt_encoder.engine.engine is None  # not opened by text-to-image or img2img
    trt_vectors = trt_encoder([init]).float().cpu().numpy()
    ort_vectors = np.asarray(ort_pipe.components.image_encoder([init]), dtype=np.float32)
    assert trt_vectors.shape == ort_vectors.shape == (1, 1152)
    relative = np.abs(trt_vectors - ort_vectors).mean() / np.abs(ort_vectors).mean()
    assert relative < 0.02  # the same fp16 graph; not measured on real TensorRT
    assert len(cache.list_engines()) == 5
    assert read_manifest(exported).engines["unet"]["environment"]["gpu_name"]


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_fp16_from_fp32_graphs_follows_the_installed_release(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10.x builds them with BuilderFlag.FP16; 11.x, which has no such flag, refuses."""
    from sdxs_rt.backends.tensorrt.build_mode import has_fp16_flag

    trt = require_tensorrt_and_gpu()
    exported = Path(shutil.copytree(request.getfixturevalue("exported_tiny_fp32"), tmp_path / "e"))
    monkeypatch.setenv("SDXS_RT_ENGINE_CACHE", str(tmp_path / "engines"))
    small = SizeProfile(min_size=64, opt_size=64, max_size=128, max_batch=1)
    if not has_fp16_flag(trt):
        with pytest.raises(UsageError, match="--precision fp16 --out"):
            builder_module.build_engines(exported, small, "fp16")
        return
    paths = builder_module.build_engines(exported, small, "fp16")
    modes = {json.loads(p.with_suffix(".json").read_text())["key"]["build_mode"] for p in paths}
    assert modes == {FP16_FLAG}
