"""The CUDA head kernels against their NumPy references, on a GPU and under the CPU emulation.

Every kernel of kernels/*.cu runs through its launcher in edgefs.kernels.launch and is compared
with the function of edgefs.heads.reference it mirrors, over C in {1, 5, 100, 1000}, D in
{64, 512, 640, 1280} and shots in {1, 5, 20}, with float16 inputs too; a zero-copy test feeds
torch CUDA tensors straight to the kernels. Each test runs once per backend (the ``launch``
fixture):
- ``cuda``: pycuda on a GPU (marker ``gpu``); skipped with a reason where there is no GPU (root
  conftest.py) or no pycuda.
- ``emu``: the same launchers and the same .cu sources compiled as C++ and run on CPU threads
  emulated as fibers (edgefs.kernels.emu; runs in CI, needs only a C++ compiler). It checks the
  arithmetic, indexing, synchronisation logic and argument marshalling, not GPU timing or the
  GPU memory model (see kernels/emu/cuda_emu.h). The zero-copy and CUDA-head tests need torch
  CUDA tensors and run on the GPU only.

Tolerances (float32 accumulation in another order than NumPy's):
- accumulate: sums and counts bit-identical (same sequence of float32 adds as np.add.at);
  normalised means within 2e-6 absolute (unit vectors).
- classify: probabilities and best cosine within 1e-5 absolute; top-k indices identical except
  between entries whose reference probabilities are within 1e-5 (near ties); unknown flags
  identical except where the best cosine is within 1e-5 of the threshold.
- fine-tune (Gram and plain kernels, and Gram against plain): W and b within
  1e-4 * max(1, max|W_ref|) absolute after up to 100 steps.
Status: written on a machine without a GPU; not yet run on one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from edgefs.heads import HEADS, HeadSpec
from edgefs.heads import reference as ref


def _compiler_reason() -> str | None:
    from edgefs.kernels.emu import build

    from edgefs.errors import MissingDependencyError

    try:
        build.find_compiler()
    except MissingDependencyError as exc:
        return str(exc)
    return None


BACKENDS = [
    pytest.param("cuda", id="cuda", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(importlib.util.find_spec("pycuda") is None,
                           reason="pycuda is not installed (pip install pycuda; see ../shared/DEVICE.md)")]),
    pytest.param("emu", id="emu", marks=pytest.mark.skipif(_compiler_reason() is not None,
                                                           reason=f"no C++ compiler: {_compiler_reason()}")),
]

CLASSES = [1, 5, 100, 1000]
DIMS = [64, 512, 640, 1280]
SHOTS = [1, 5, 20]
PROTO_ATOL = 2e-6
PROB_ATOL = 1e-5
FT_RTOL = 1e-4


@pytest.fixture(scope="module", params=BACKENDS)
def launch(request: pytest.FixtureRequest) -> Any:
    """The launcher module of the backend: edgefs.kernels.launch (GPU) or its emulated twin."""
    if request.param == "cuda":
        from edgefs.kernels import launch

        launch.runtime()
        return launch
    from edgefs.kernels.emu import launch as emulated

    emulated.runtime()
    return emulated


def gpu_only(launch: Any, why: str) -> None:
    if launch.__name__.endswith(".emu.launch"):
        pytest.skip(f"GPU only: {why}")


def emu_heavy(test: str, params: dict[str, Any]) -> str | None:
    """Why a case is too heavy for the default run under the CPU emulation (device_tests/conftest.py
    marks it ``slow`` there), or None. Measured on a 2-core VM, CPU seconds per case."""
    if test == "test_finetune_gram_and_plain" and params["classes"] >= 1000:
        return "C=1000, N=256: ~12 s, of which the plain loop's 2.6M warp reductions ~10 s"
    if test == "test_finetune_per_parameter_rates_and_ewc" and params["classes"] >= 100:
        return "C=100, N=256: per-class Gram of 100 x 256 x 256 plus three plain loops, minutes"
    return None


Check = Callable[[str, str, float, float], None]


@pytest.fixture
def measure(record_property: Callable[[str, object], None]) -> Check:
    """check(kernel, quantity, error, tolerance): assert error <= tolerance and record both
    (device_tests/conftest.py prints the largest error per kernel and backend)."""

    def check(kernel: str, quantity: str, error: float, tolerance: float) -> None:
        record_property("kernel_error", [kernel, quantity, float(error), float(tolerance)])
        assert error <= tolerance, f"{kernel} {quantity}: error {error:.3g} above the tolerance {tolerance:.3g}"

    return check


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    return ref.l2_normalize(rng.normal(size=(rows, dim)))


def assert_topk_close(ref_idx: np.ndarray, ref_prob: np.ndarray, idx: np.ndarray, prob: np.ndarray,
                      all_prob: np.ndarray, measure: Check) -> None:
    """Same ranking up to near ties: where an index differs, both classes' reference
    probabilities lie within PROB_ATOL of each other."""
    assert idx.shape == ref_idx.shape and idx.dtype == np.int32
    measure("classify", "top-k probabilities", np.abs(prob - ref_prob).max(initial=0.0), PROB_ATOL)
    rows, cols = np.nonzero(idx != ref_idx)
    for r, c in zip(rows, cols, strict=True):
        assert abs(all_prob[r, idx[r, c]] - all_prob[r, ref_idx[r, c]]) <= PROB_ATOL, (r, c)


# ---- accumulate ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shots", SHOTS)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("classes", CLASSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_accumulate_normalize(launch: Any, measure: Check, classes: int, dim: int, shots: int, dtype: type) -> None:
    rng = np.random.default_rng(classes * 7 + dim + shots)
    enrolled = min(classes, 10)
    x = rng.normal(size=(enrolled * shots, dim)).astype(dtype)
    y = np.repeat(np.arange(enrolled), shots).astype(np.int32)
    rng.shuffle(y)
    sums = np.zeros((classes, dim), np.float32)
    counts = np.zeros(classes, np.int32)
    half = classes // 2  # some classes already hold shots: the update is incremental
    sums[:half] = rng.normal(size=(half, dim))
    counts[:half] = rng.integers(1, 4, half)
    s_ref, c_ref = sums.copy(), counts.copy()
    p_ref = ref.accumulate_normalize(x, y, s_ref, c_ref)

    s_host, c_host = sums.copy(), counts.copy()
    p_host = launch.accumulate_normalize(x, y, s_host, c_host)
    measure("accumulate", "sums (bit-identical)", np.abs(s_host - s_ref).max(), 0.0)
    assert np.array_equal(c_host, c_ref)
    measure("accumulate", "means", np.abs(p_host - p_ref).max(), PROTO_ATOL)

    # GPU state, touched rows only, the other rows of `out` untouched.
    d_sums, d_counts = launch.DeviceBuffer.from_host(sums), launch.DeviceBuffer.from_host(counts)
    out = launch.DeviceBuffer.from_host(np.full((classes, dim), 7.0, np.float32))
    launch.accumulate_normalize(launch.DeviceBuffer.from_host(x), y, d_sums, d_counts, out=out, touched_only=True)
    touched = np.isin(np.arange(classes), y)
    measure("accumulate", "sums (bit-identical)", np.abs(d_sums.to_host() - s_ref).max(), 0.0)
    assert np.array_equal(d_counts.to_host(), c_ref)
    got = out.to_host()
    measure("accumulate", "means", np.abs(got[touched] - p_ref[touched]).max(), PROTO_ATOL)
    assert (got[~touched] == 7.0).all()


@pytest.mark.parametrize("dim", [64, 1280])
def test_accumulate_with_shot_normalisation_is_what_the_heads_do(launch: Any, measure: Check, dim: int) -> None:
    rng = np.random.default_rng(dim)
    x = (3.0 * rng.normal(size=(5, dim))).astype(np.float32)
    y = np.full(5, 2, np.int32)
    s_ref, c_ref = np.zeros((4, dim), np.float32), np.zeros(4, np.int32)
    p_ref = ref.accumulate_normalize(ref.l2_normalize(x), y, s_ref, c_ref)
    d_sums, d_counts = launch.DeviceBuffer((4, dim), zero=True), launch.DeviceBuffer((4,), np.int32, zero=True)
    out = launch.accumulate_normalize(x, y, d_sums, d_counts, normalize_shots=True)
    measure("accumulate", "sums (unit shots)", np.abs(d_sums.to_host() - s_ref).max(), 1e-6)
    assert np.array_equal(d_counts.to_host(), c_ref)
    measure("accumulate", "means", np.abs(out.to_host() - p_ref).max(), PROTO_ATOL)


# ---- classify -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shots", SHOTS)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("classes", CLASSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_classify(launch: Any, measure: Check, classes: int, dim: int, shots: int, dtype: type) -> None:
    rng = np.random.default_rng(classes + 3 * dim + shots)
    w = unit_rows(rng, classes, dim)
    if classes > 4:
        w[3] = w[1]  # an exact tie: the lower index first
    # `shots` queries near random classes (a batch), scaled away from unit norm.
    q = (2.5 * (w[rng.integers(0, classes, shots)] + 0.5 * unit_rows(rng, shots, dim))).astype(dtype)
    k, temperature, threshold = 5, 10.0, 0.6
    r_idx, r_prob, r_best, r_unknown = ref.classify(q, w, temperature, k, threshold)
    all_prob = ref.softmax(np.float32(temperature) * (ref.l2_normalize(q) @ w.T))
    for weights in (w, launch.DeviceBuffer.from_host(w)):
        idx, prob, best, unknown = launch.classify(q, weights, temperature, k, threshold)
        assert_topk_close(r_idx, r_prob, idx, prob, all_prob, measure)
        measure("classify", "best cosine", np.abs(best - r_best).max(), PROB_ATOL)
        near = np.abs(r_best - threshold) <= PROB_ATOL
        assert np.array_equal(unknown[~near], r_unknown[~near])


@pytest.mark.parametrize(("classes", "dim", "queries"), [(12_500, 64, 2), (40, 12_800, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_classify_beyond_shared_memory(launch: Any, measure: Check, classes: int, dim: int, queries: int,
                                       dtype: type) -> None:
    """C or D above what shared memory holds (~12,000 floats): the class row's softmax and top-k run in
    the global scratch row, the query is read from global memory; same results as the reference."""
    rng = np.random.default_rng(classes + dim)
    w = unit_rows(rng, classes, dim)
    w[classes - 2] = w[7]  # an exact tie far apart: the lower index first
    q = (3.0 * (w[rng.integers(0, classes, queries)] + 0.3 * unit_rows(rng, queries, dim))).astype(dtype)
    q[0] = (2.0 * w[7]).astype(dtype)
    k, temperature, threshold = 5, 10.0, 0.6
    assert 4 * max(classes, dim) > 48 * 1024  # the case the launcher used to refuse (SMEM_LIMIT)
    r_idx, r_prob, r_best, r_unknown = ref.classify(q, w, temperature, k, threshold)
    all_prob = ref.softmax(np.float32(temperature) * (ref.l2_normalize(q) @ w.T))
    idx, prob, best, unknown = launch.classify(q, launch.DeviceBuffer.from_host(w), temperature, k, threshold)
    assert_topk_close(r_idx, r_prob, idx, prob, all_prob, measure)
    measure("classify", "best cosine (tiled)", np.abs(best - r_best).max(), PROB_ATOL)
    near = np.abs(r_best - threshold) <= PROB_ATOL
    assert np.array_equal(unknown[~near], r_unknown[~near])
    if classes > 7:
        assert idx[0, 0] == 7 and idx[0, 1] == classes - 2  # the tie, in index order


def test_classify_with_bias_and_similarity_rows(launch: Any, measure: Check) -> None:
    """The fine-tune head's scoring: l2_normalize(q) @ W^T + b; best cosine against the prototypes."""
    rng = np.random.default_rng(5)
    w = rng.normal(size=(100, 640)).astype(np.float32)
    b = rng.normal(size=100).astype(np.float32)
    protos = unit_rows(rng, 100, 640)
    q = rng.normal(size=(7, 640)).astype(np.float32)
    logits = ref.l2_normalize(q) @ w.T + b
    r_idx, r_prob = ref.topk(ref.softmax(logits), 8)
    r_best = (ref.l2_normalize(q) @ protos.T).max(axis=1)
    idx, prob, best, unknown = launch.classify(q, w, 1.0, 8, 0.1, bias=b, sim_rows=protos)
    assert_topk_close(r_idx, r_prob, idx, prob, ref.softmax(logits), measure)
    measure("classify", "best cosine", np.abs(best - r_best).max(), PROB_ATOL)
    assert np.array_equal(unknown, r_best < 0.1)


# ---- fine-tune ----------------------------------------------------------------------------------
def finetune_problem(classes: int, dim: int, shots: int, seed: int) -> tuple[np.ndarray, ...]:
    """Unit support rows around class centres (at most 256 of them), imprinted-like w0."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng, classes, dim)
    y = np.repeat(np.arange(classes), shots)[:256].astype(np.int32)
    x = ref.l2_normalize(centres[y] + 0.3 * unit_rows(rng, len(y), dim))
    w0 = (10.0 * centres + 0.1 * rng.normal(size=(classes, dim))).astype(np.float32)
    b0 = (0.1 * rng.normal(size=classes)).astype(np.float32)
    return x, y, w0, b0


def assert_weights_close(got: tuple[Any, Any], want: tuple[np.ndarray, np.ndarray], launch: Any, measure: Check,
                         kernel: str) -> None:
    """W and b within FT_RTOL * max(1, max|W_want|) (recorded as that relative error)."""
    w, b = (launch.to_host(a) for a in got)
    scale = max(1.0, float(np.abs(want[0]).max()))
    error = max(float(np.abs(w - want[0]).max(initial=0.0)), float(np.abs(b - want[1]).max(initial=0.0)))
    measure(kernel, "W, b / max(1, max|W|)", error / scale, FT_RTOL)


@pytest.mark.parametrize("shots", SHOTS)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("classes", CLASSES)
def test_finetune_gram_and_plain(launch: Any, measure: Check, classes: int, dim: int, shots: int) -> None:
    x, y, w0, b0 = finetune_problem(classes, dim, shots, classes + dim + shots)
    steps = 100 if len(y) * len(y) * classes <= 2_000_000 else 10
    args = (0.5, 0.5, steps, 0.9, 0.01)
    want = ref.finetune_gram(x, y, w0, b0, *args)
    gram = launch.finetune_gram(x, y, w0, b0, *args)
    plain = launch.finetune(x, y, w0, b0, *args)
    assert_weights_close(gram, want, launch, measure, "finetune_gram")
    assert_weights_close(plain, ref.finetune(x, y, w0, b0, *args), launch, measure, "finetune_plain")
    assert_weights_close(gram, plain, launch, measure, "gram vs plain")  # the Gram form matches the plain loop


@pytest.mark.parametrize("classes", [1, 5, 100])
@pytest.mark.parametrize("dim", [64, 1280])
def test_finetune_per_parameter_rates_and_ewc(launch: Any, measure: Check, classes: int, dim: int) -> None:
    x, y, w0, b0 = finetune_problem(classes, dim, 5, 11 * classes + dim)
    rng = np.random.default_rng(dim)
    lr = (0.5 * rng.uniform(0.5, 1.5, size=dim)).astype(np.float32)
    fisher = rng.uniform(0.0, 2.0, size=(classes, dim)).astype(np.float32)
    for lr_, l2 in ((lr, 0.0), (np.broadcast_to(lr, w0.shape), 0.0), (0.5, 0.01 * fisher), (lr, 0.01)):
        want = ref.finetune_gram(x, y, w0, b0, lr_, 0.5, 50, 0.9, l2)
        # A per-parameter lr with l2 == 0 runs the per-class Gram kernel, the rest the plain loop.
        kernel = "finetune_gram" if isinstance(l2, float) and l2 == 0.0 else "finetune_plain"
        assert_weights_close(launch.finetune_gram(x, y, w0, b0, lr_, 0.5, 50, 0.9, l2), want, launch, measure, kernel)


@pytest.mark.parametrize("dim", [640, 1280])
def test_finetune_float16_support_on_the_gpu(launch: Any, measure: Check, dim: int) -> None:
    x, y, w0, b0 = finetune_problem(5, dim, 5, dim)
    x16 = x.astype(np.float16)
    want = ref.finetune_gram(x16, y, w0, b0, 0.5, 0.5, 100, 0.9, 0.01)
    dev = [launch.DeviceBuffer.from_host(a) for a in (x16, y, w0, b0)]
    out = (launch.DeviceBuffer(w0.shape), launch.DeviceBuffer(b0.shape))
    got = launch.finetune_gram(dev[0], dev[1], dev[2], dev[3], 0.5, 0.5, 100, 0.9, 0.01, out=out)
    assert got[0] is out[0] and got[1] is out[1]
    assert_weights_close(got, want, launch, measure, "finetune_gram")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_dimension_not_a_multiple_of_4_takes_the_element_wise_path(launch: Any, measure: Check,
                                                                     dtype: type) -> None:
    """D % 4 != 0: the launchers pass vec = 0, and classify and both fine-tune kernels load one
    element at a time (the grid above, all D % 4 == 0, never takes that path)."""
    dim = 66
    rng = np.random.default_rng(dim)
    w = unit_rows(rng, 7, dim)
    q = (w[rng.integers(0, 7, 3)] + 0.5 * unit_rows(rng, 3, dim)).astype(dtype)
    r_idx, r_prob, r_best, _ = ref.classify(q, w, 10.0, 3, 0.6)
    idx, prob, best, _ = launch.classify(q, w, 10.0, 3, 0.6)
    assert_topk_close(r_idx, r_prob, idx, prob, ref.softmax(np.float32(10.0) * (ref.l2_normalize(q) @ w.T)), measure)
    measure("classify", "best cosine", np.abs(best - r_best).max(), PROB_ATOL)
    x, y, w0, b0 = finetune_problem(7, dim, 3, dim)
    x = x.astype(dtype)
    args = (0.5, 0.5, 100, 0.9, 0.01)
    assert_weights_close(launch.finetune_gram(x, y, w0, b0, *args), ref.finetune_gram(x, y, w0, b0, *args), launch,
                         measure, "finetune_gram")
    assert_weights_close(launch.finetune(x, y, w0, b0, *args), ref.finetune(x, y, w0, b0, *args), launch, measure,
                         "finetune_plain")


# ---- zero copy ----------------------------------------------------------------------------------
def test_torch_cuda_tensors_go_to_the_kernels_without_a_host_copy(launch: Any, measure: Check,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_only(launch, "torch CUDA tensors read in place")
    torch = pytest.importorskip("torch")
    from edgefs.runtime.engine import DeviceArray

    rng = np.random.default_rng(0)
    w = unit_rows(rng, 1000, 1280)
    d_w = launch.DeviceBuffer.from_host(w)
    q_host = rng.normal(size=(4, 1280)).astype(np.float32)
    q = torch.from_numpy(q_host).cuda()  # in the primary context, like an engine's output
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # produced on another stream: the launcher waits for it
        q_side = (q * 2.0).half()
    side.synchronize()
    q_side_host = q_side.cpu().numpy()
    rt = launch.runtime()

    def no_host_copy(*_: Any, **__: Any) -> None:
        raise AssertionError("a host-to-device copy happened")

    monkeypatch.setattr(rt.cuda, "memcpy_htod", no_host_copy)
    cases = [(q, q_host), (DeviceArray(int(q.data_ptr()), tuple(q.shape), "float32", 0, q), q_host),
             (DeviceArray(int(q_side.data_ptr()), tuple(q_side.shape), "float16", int(side.cuda_stream), q_side),
              q_side_host)]
    for queries, host in cases:
        want = ref.classify(host, w, 10.0, 5, 0.2)
        idx, prob, best, unknown = launch.classify(queries, d_w, 10.0, 5, 0.2)
        assert_topk_close(want[0], want[1], idx, prob, ref.softmax(np.float32(10.0) * (ref.l2_normalize(host) @ w.T)),
                          measure)
        assert np.abs(best - want[2]).max() <= PROB_ATOL and np.array_equal(unknown, want[3])
    monkeypatch.undo()
    # torch reads a kernel's output in place (the interface's stream 1 = legacy default).
    labels = np.array([0, 2, 2, 0], np.int32)
    sums = launch.DeviceBuffer((3, 1280), zero=True)
    counts = launch.DeviceBuffer((3,), np.int32, zero=True)
    protos = launch.accumulate_normalize(q, labels, sums, counts)
    as_tensor = torch.as_tensor(protos, device="cuda")
    assert as_tensor.data_ptr() == protos.ptr
    s_ref, c_ref = np.zeros((3, 1280), np.float32), np.zeros(3, np.int32)
    p_ref = ref.accumulate_normalize(q_host, labels, s_ref, c_ref)
    assert np.abs(as_tensor.cpu().numpy() - p_ref).max() <= PROTO_ATOL


# ---- heads --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, params", [("imprint", {}), ("prototype", {"distance": "cosine"}),
                                          ("finetune", {"steps": 50}), ("finetune", {"penalty": "ewc"})])
def test_cuda_heads_agree_with_numpy_heads(launch: Any, name: str, params: dict[str, Any]) -> None:
    gpu_only(launch, "the CUDA heads take torch CUDA tensors")
    torch = pytest.importorskip("torch")
    from edgefs.heads.cuda import build_cuda_head, to_cuda

    rng = np.random.default_rng(1)
    dim = 640
    cpu = HEADS.get(name).from_spec(HeadSpec(name, params), dim)
    gpu = build_cuda_head(HeadSpec(name, params), dim)
    centres = unit_rows(rng, 8, dim)
    for i in range(6):
        shots = centres[i] + 0.4 * unit_rows(rng, 5, dim)
        cpu.add_class(f"c{i}", shots)
        gpu.add_class(f"c{i}", shots)
    extra = centres[2] + 0.4 * unit_rows(rng, 3, dim)
    cpu.append("c2", extra)
    gpu.append("c2", extra)
    cpu.remove("c0")
    gpu.remove("c0")
    q = (centres[rng.integers(0, 8, 16)] + 0.5 * unit_rows(rng, 16, dim)).astype(np.float32)
    want = cpu.classify(q, k=3)
    for got in (gpu.classify(q, k=3), gpu.classify(torch.from_numpy(q).cuda(), k=3), to_cuda(cpu).classify(q, k=3)):
        assert np.abs(got.top_prob - want.top_prob).max() <= 1e-4
        assert np.abs(got.best_sim - want.best_sim).max() <= PROB_ATOL
        assert got.labels == want.labels
    for key, value in cpu.state()[0].items():
        assert np.abs(gpu.state()[0][key].astype(np.float64) - value).max() <= 1e-4, key
