"""CUDA head kernels without a GPU: nvcc compiles every kernel for sm_87 (Jetson Orin) and sm_90
(H100); the cubin cache keys; the launchers' argument checks and launch plans; the kernel entry
points agree with the launchers' argument formats. The kernels' results are checked against the
NumPy references in device_tests/test_kernels.py, on a GPU."""

from __future__ import annotations

import importlib.util
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgefs.kernels import build, launch, plans
from edgefs.kernels import runtime as kernel_runtime

from edgefs.errors import EdgefsError, MissingDependencyError
from edgefs.runtime.engine import DeviceArray

ARCHS = ("sm_87", "sm_90")
HAS_PYCUDA = importlib.util.find_spec("pycuda") is not None


def nvcc_reason() -> str | None:
    try:
        build.find_nvcc()
    except MissingDependencyError as exc:
        return f"nvcc is not installed: {exc}"
    return None


needs_nvcc = pytest.mark.skipif(nvcc_reason() is not None, reason=str(nvcc_reason()))


# ---- compilation --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[Path]]]:
    """Every kernel compiled for both architectures into a fresh cache (both in parallel)."""
    cache = tmp_path_factory.mktemp("cubins")
    with ThreadPoolExecutor(max_workers=len(ARCHS)) as pool:
        paths = list(pool.map(lambda arch: build.compile_check(arch, cache=cache, jobs=2), ARCHS))
    return {arch: (cache, p) for arch, p in zip(ARCHS, paths, strict=True)}


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles(compiled: dict[str, tuple[Path, list[Path]]], arch: str) -> None:
    cache, paths = compiled[arch]
    assert [p.name.split("-")[0] for p in paths] == [s.stem for s in build.kernel_sources()]
    entries = {name: [f"{name}_f32", f"{name}_f16"] for name in kernel_runtime.ARG_FORMATS}
    entries["edgefs_noop"] = ["edgefs_noop"]
    for path in paths:
        data = path.read_bytes()
        assert path.parent == cache and f"-{arch}-" in path.name and data[:4] == b"\x7fELF"
        for name, symbols in entries.items():
            if kernel_runtime.MODULES.get(name, "noop") == path.name.split("-")[0]:
                assert all(s.encode() in data for s in symbols), (path.name, symbols)


@needs_nvcc
def test_compile_check_reuses_the_cache(compiled: dict[str, tuple[Path, list[Path]]],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cache, paths = compiled["sm_90"]

    def refuse(*_: Any, **__: Any) -> Path:
        raise AssertionError("a cached kernel was recompiled")

    monkeypatch.setattr(build, "compile_cubin", refuse)
    assert build.compile_check("sm_90", cache=cache) == paths


@needs_nvcc
def test_a_broken_kernel_reports_nvcc_output(tmp_path: Path) -> None:
    source = tmp_path / "broken.cu"
    source.write_text('extern "C" __global__ void broken() { undeclared_name = 1; }\n')
    with pytest.raises(build.KernelBuildError, match=r"broken\.cu.*sm_90(.|\n)*undeclared_name"):
        build.compile_cubin(source, "sm_90", tmp_path / "broken.cubin")
    assert not (tmp_path / "broken.cubin").exists()


# ---- cache keys ---------------------------------------------------------------------------------
def test_cache_key_depends_on_source_arch_compiler_and_flags() -> None:
    base = build.cache_key("digest", "sm_90", "nvcc 13.0")
    assert base == build.cache_key("digest", "sm_90", "nvcc 13.0")
    others = {build.cache_key("digest2", "sm_90", "nvcc 13.0"), build.cache_key("digest", "sm_87", "nvcc 13.0"),
              build.cache_key("digest", "sm_90", "nvcc 12.6"),
              build.cache_key("digest", "sm_90", "nvcc 13.0", (*build.NVCC_FLAGS, "--use_fast_math"))}
    assert base not in others and len(others) == 4


def test_source_digest_covers_the_headers(tmp_path: Path) -> None:
    (tmp_path / "k.cu").write_text('#include "common.cuh"\n')
    (tmp_path / "common.cuh").write_text("// v1\n")
    first = build.source_digest(tmp_path / "k.cu")
    assert first == build.source_digest(tmp_path / "k.cu")
    (tmp_path / "common.cuh").write_text("// v2\n")
    assert build.source_digest(tmp_path / "k.cu") != first


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "mine"))
    assert build.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(build.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_dir() == tmp_path / "xdg" / "edgefs" / "kernels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert build.cache_dir() == Path.home() / ".cache" / "edgefs" / "kernels"


def test_arch_names() -> None:
    assert build.arch_of((8, 7)) == "sm_87" and build.arch_of((9, 0)) == "sm_90"
    assert build.check_arch("sm_90a") == "sm_90a"
    for bad in ("90", "sm90", "compute_90", "sm_9", ""):
        with pytest.raises(EdgefsError, match="sm_87"):
            build.check_arch(bad)


def test_missing_nvcc_names_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(build.NVCC_ENV, str(tmp_path / "no-nvcc"))
    with pytest.raises(MissingDependencyError, match="CUDA toolkit"):
        build.find_nvcc()
    monkeypatch.delenv(build.NVCC_ENV)
    for var in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(build, "CUDA_ROOTS", (str(tmp_path),))
    with pytest.raises(MissingDependencyError, match=r"needs nvcc(.|\n)*CUDA toolkit"):
        build.find_nvcc()


def test_unknown_kernel_name() -> None:
    with pytest.raises(EdgefsError, match="known: accumulate, classify, finetune, noop"):
        build.source_path("nope")


# ---- entry points agree with the launchers ------------------------------------------------------
_ENTRY = re.compile(r'extern "C" __global__ void(?: __launch_bounds__\(\d+\))?\s+(\w+)\(([^)]*)\)')


def _formats_in_sources() -> dict[str, str]:
    """{entry: format} parsed from the .cu sources: pointer -> P, int -> i, float -> f."""
    found = {}
    for source in build.kernel_sources():
        for name, params in _ENTRY.findall(source.read_text()):
            fmt = ""
            for param in filter(None, (p.strip() for p in params.split(","))):
                fmt += "P" if "*" in param else {"int": "i", "float": "f"}[param.split()[0]]
            found[name] = fmt
    return found


def test_launcher_formats_match_the_kernel_signatures() -> None:
    found = _formats_in_sources()
    for name, fmt in kernel_runtime.ARG_FORMATS.items():
        for suffix in ("_f32", "_f16"):
            assert found.get(name + suffix) == fmt, name + suffix
    assert found["edgefs_noop"] == ""


# ---- launch plans -------------------------------------------------------------------------------
def test_gram_plan_keeps_5_way_5_shot_in_shared_memory() -> None:
    plan = plans.plan_finetune_gram(25, 5, per_class=False)
    assert plan.k_shared and plan.state_shared and plan.work_floats == 0
    assert plan.smem == 4 * (25 * 25 + 4 * 25 * 5 + 2 * 5 + 25)
    per_class = plans.plan_finetune_gram(25, 5, per_class=True)
    assert per_class.k_shared and per_class.smem == 4 * (5 * 25 * 25 + 4 * 25 * 5 + 2 * 5 + 25)


def test_gram_plan_moves_what_does_not_fit_to_global_memory() -> None:
    k_only = plans.plan_finetune_gram(100, 20, per_class=False)  # K 40 KB fits, the state (32 KB) does not
    assert k_only.k_shared and not k_only.state_shared and k_only.work_floats == 4 * 100 * 20 + 2 * 20 + 100
    state_only = plans.plan_finetune_gram(200, 5, per_class=False)  # K is 160 KB
    assert not state_only.k_shared and state_only.state_shared and state_only.work_floats == 200 * 200
    neither = plans.plan_finetune_gram(1000, 100, per_class=False)
    assert not neither.k_shared and not neither.state_shared and neither.smem == 0
    for plan in (k_only, state_only, neither):
        assert plan.smem <= plans.SMEM_LIMIT


def test_plain_plan() -> None:
    assert plans.plan_finetune_plain(25, 5) == plans.PlainPlan(True, 4 * (125 + 10 + 25), 0)
    big = plans.plan_finetune_plain(1000, 100)
    assert not big.state_shared and big.smem == 0 and big.work_floats == 100_000 + 200 + 1000


def test_classify_plan_spreads_classes_over_the_sms() -> None:
    plan = plans.plan_classify(1, 1000, 1280, sm_count=132)
    assert plan.parts * plan.classes_per_block >= 1000 and plan.parts >= 100 and plan.classes_per_block % 8 == 0
    assert plan.smem == 4 * 1280
    batch = plans.plan_classify(64, 1000, 1280, sm_count=132)
    assert batch.parts < plan.parts  # many queries fill the GPU by themselves
    assert plans.plan_classify(1, 5, 64).parts == 1
    # Beyond shared memory the class row is tiled through global memory: capped, not refused.
    big = plans.plan_classify(1, 20_000, 1280, sm_count=132)
    assert big.smem == plans.SMEM_LIMIT // 4 * 4 and big.parts * big.classes_per_block >= 20_000
    assert plans.plan_classify(1, 5, 16_000).smem == plans.SMEM_LIMIT // 4 * 4


# ---- argument checks (before any GPU work) ------------------------------------------------------
class FakeCudaArray:
    """An object exposing ``__cuda_array_interface__`` with a made-up pointer (never dereferenced)."""

    def __init__(self, shape: tuple[int, ...], typestr: str = "<f4", strides: tuple[int, ...] | None = None,
                 stream: int | None = None) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0x7F0000000000, False),
                                         "version": 3, "strides": strides, "stream": stream}


def test_operands_from_host_and_device() -> None:
    host = kernel_runtime.operand(np.ones((3, 4), np.float64), "q", ("float32", "float16"), 2, host_dtype="float32")
    assert not host.on_device and host.host is not None and host.host.dtype == np.float32
    cai = kernel_runtime.operand(FakeCudaArray((3, 4), "<f2", stream=7), "q", ("float32", "float16"), 2)
    assert cai.on_device and cai.ptr == 0x7F0000000000 and cai.dtype == np.float16 and cai.stream == 7
    contiguous = kernel_runtime.operand(FakeCudaArray((3, 4), strides=(16, 4)), "q", ("float32",), 2)
    assert contiguous.on_device
    dev = kernel_runtime.operand(DeviceArray(1024, (2, 8), "float32", stream=5), "q", ("float32",), 2)
    assert dev.ptr == 1024 and dev.shape == (2, 8) and dev.stream == 5
    assert launch.is_device(FakeCudaArray((1,))) and not launch.is_device(np.zeros(1))


def test_operand_errors() -> None:
    with pytest.raises(EdgefsError, match="strided"):
        kernel_runtime.operand(FakeCudaArray((3, 4), strides=(4, 12)), "q", ("float32",), 2)
    with pytest.raises(EdgefsError, match=r"GPU.*float64"):
        kernel_runtime.operand(FakeCudaArray((3, 4), "<f8"), "q", ("float32", "float16"), 2)
    with pytest.raises(EdgefsError, match="2-D"):
        kernel_runtime.operand(np.zeros(4, np.float32), "q", ("float32",), 2)
    with pytest.raises(EdgefsError, match="dtype"):
        kernel_runtime.operand(np.array([["a"]]), "q", ("float32",), 2, host_dtype="float32")


def test_classify_argument_errors() -> None:
    q, w = np.ones((2, 8), np.float32), np.eye(3, 8, dtype=np.float32)
    with pytest.raises(EdgefsError, match="k must be at least 1"):
        launch.classify(q, w, 10.0, 0, 0.0)
    with pytest.raises(EdgefsError, match="top-32"):
        launch.classify(q, w, 10.0, 33, 0.0)
    with pytest.raises(EdgefsError, match="embedding size"):
        launch.classify(np.ones((2, 7), np.float32), w, 10.0, 1, 0.0)
    with pytest.raises(EdgefsError, match="bias"):
        launch.classify(q, w, 10.0, 1, 0.0, bias=np.zeros(4, np.float32))
    with pytest.raises(EdgefsError, match="sim_rows"):
        launch.classify(q, w, 10.0, 1, 0.0, sim_rows=np.zeros((3, 7), np.float32))
    with pytest.raises(EdgefsError, match="threads"):
        launch.classify(q, w, 10.0, 1, 0.0, threads=100)


def test_classify_without_classes_needs_no_gpu() -> None:
    top_idx, top_prob, best, unknown = launch.classify(np.ones((2, 8), np.float32), np.zeros((0, 8), np.float32),
                                                       10.0, 3, 0.0)
    assert top_idx.shape == (2, 0) and top_prob.shape == (2, 0) and np.isneginf(best).all() and unknown.all()


def test_accumulate_argument_errors() -> None:
    x = np.ones((3, 8), np.float32)
    sums, counts = np.zeros((4, 8), np.float32), np.zeros(4, np.int32)
    with pytest.raises(EdgefsError, match=r"must lie in 0\.\.3"):
        launch.accumulate_normalize(x, np.array([0, 1, 4], np.int32), sums, counts)
    with pytest.raises(EdgefsError, match="float32"):
        launch.accumulate_normalize(x, np.zeros(3, np.int32), sums.astype(np.float64), counts)
    with pytest.raises(EdgefsError, match="do not fit"):
        launch.accumulate_normalize(np.ones((3, 7), np.float32), np.zeros(3, np.int32), sums, counts)
    with pytest.raises(EdgefsError, match="both"):
        launch.accumulate_normalize(x, np.zeros(3, np.int32), sums, FakeCudaArray((4,), "<i4"))
    with pytest.raises(EdgefsError, match="touched_only"):
        launch.accumulate_normalize(x, np.zeros(3, np.int32), sums, counts, touched_only=True)


def test_finetune_argument_errors() -> None:
    x, y = np.ones((4, 8), np.float32), np.array([0, 1, 0, 1], np.int32)
    w0, b0 = np.zeros((2, 8), np.float32), np.zeros(2, np.float32)
    for fn in (launch.finetune_gram, launch.finetune):
        with pytest.raises(EdgefsError, match="do not agree"):
            fn(x, y, w0, np.zeros(3, np.float32), 0.5, 0.5, 10, 0.9, 0.0)
        with pytest.raises(EdgefsError, match=r"must lie in 0\.\.1"):
            fn(x, np.array([0, 1, 2, 0], np.int32), w0, b0, 0.5, 0.5, 10, 0.9, 0.0)
        with pytest.raises(EdgefsError, match="steps"):
            fn(x, y, w0, b0, 0.5, 0.5, -1, 0.9, 0.0)
        with pytest.raises(EdgefsError, match="broadcast"):
            fn(x, y, w0, b0, np.ones((3, 8), np.float32), 0.5, 10, 0.9, 0.0)
        with pytest.raises(EdgefsError, match="threads"):
            fn(x, y, w0, b0, 0.5, 0.5, 10, 0.9, 0.0, threads=1024)


def test_rates_become_scalars_rows_or_full_arrays() -> None:
    assert launch._rate(0.5, "lr", 3, 8)[0] == 0.5 and launch._rate(0.5, "lr", 3, 8)[1] is None
    _, row, stride = launch._rate(np.arange(8, dtype=np.float32), "lr", 3, 8)
    assert row is not None and row.shape == (8,) and stride == 0
    _, full, stride = launch._rate(np.ones((3, 8), np.float32), "lr", 3, 8)
    assert full is not None and full.shape == (3, 8) and stride == 8
    _, per_class, stride = launch._rate(np.ones((3, 1), np.float32), "lr", 3, 8)
    assert per_class is not None and per_class.shape == (3, 8) and stride == 8
    _, dev, stride = launch._rate(FakeCudaArray((8,)), "lr", 3, 8)
    assert dev is not None and dev.on_device and stride == 0
    with pytest.raises(EdgefsError, match=r"\(8,\) or \(3, 8\)"):
        launch._rate(FakeCudaArray((3, 1)), "lr", 3, 8)


@pytest.mark.skipif(HAS_PYCUDA, reason="pycuda is installed: the missing-dependency message cannot be shown")
def test_valid_calls_without_pycuda_say_what_to_install() -> None:
    from edgefs.heads.cuda import CudaImprintHead

    with pytest.raises(MissingDependencyError, match="pip install pycuda"):
        launch.classify(np.ones((1, 8), np.float32), np.eye(2, 8, dtype=np.float32), 10.0, 1, 0.0)
    with pytest.raises(MissingDependencyError, match="pycuda"):
        CudaImprintHead(8)


def test_cuda_heads_are_registered_for_the_kernel_backed_heads() -> None:
    from edgefs.heads.cuda import CUDA_HEADS

    assert CUDA_HEADS.names() == ["finetune", "imprint", "prototype"]


def test_one_version_helper_keys_both_kernel_builds(tmp_path: Path) -> None:
    """The real build (nvcc) and the emulated one (a C++ compiler) key their caches on the same helper's
    ``--version`` text; a tool that cannot run says what to install."""
    from edgefs.kernels.emu import build as emu

    cxx = emu.find_compiler()
    assert emu.compiler_version(cxx) == build.tool_version(cxx, "unused") != ""
    broken = tmp_path / "nvcc"
    broken.write_text("not a program")
    with pytest.raises(MissingDependencyError, match=r"cannot run .*nvcc --version .*Install the CUDA toolkit"):
        build.nvcc_version(broken)
    with pytest.raises(MissingDependencyError, match=r"cannot run .*--version .*Install a C\+\+ compiler"):
        emu.compiler_version(broken)
