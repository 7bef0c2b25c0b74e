"""The CUDA head kernels against their NumPy references, on a GPU (marker ``gpu``).

Every kernel of kernels/*.cu runs through its launcher in edgefs.kernels.launch and is compared
with the function of edgefs.heads.reference it mirrors, over C in {1, 5, 100, 1000}, D in
{64, 512, 640, 1280} and shots in {1, 5, 20}, with float16 inputs too; a zero-copy test feeds
torch CUDA tensors straight to the kernels. Skipped with a reason where there is no GPU (root
conftest.py) or no pycuda.

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
from typing import Any

import numpy as np
import pytest

from edgefs.heads import HEADS, HeadSpec
from edgefs.heads import reference as ref

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("pycuda") is None,
                       reason="pycuda is not installed (pip install pycuda; see ../shared/DEVICE.md)"),
]

CLASSES = [1, 5, 100, 1000]
DIMS = [64, 512, 640, 1280]
SHOTS = [1, 5, 20]
PROTO_ATOL = 2e-6
PROB_ATOL = 1e-5
FT_RTOL = 1e-4


@pytest.fixture(scope="module")
def launch() -> Any:
    from edgefs.kernels import launch

    launch.runtime()
    return launch


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    return ref.l2_normalize(rng.normal(size=(rows, dim)))


def assert_topk_close(ref_idx: np.ndarray, ref_prob: np.ndarray, idx: np.ndarray, prob: np.ndarray,
                      all_prob: np.ndarray) -> None:
    """Same ranking up to near ties: where an index differs, both classes' reference
    probabilities lie within PROB_ATOL of each other."""
    assert idx.shape == ref_idx.shape and idx.dtype == np.int32
    assert np.abs(prob - ref_prob).max(initial=0.0) <= PROB_ATOL
    rows, cols = np.nonzero(idx != ref_idx)
    for r, c in zip(rows, cols, strict=True):
        assert abs(all_prob[r, idx[r, c]] - all_prob[r, ref_idx[r, c]]) <= PROB_ATOL, (r, c)


# ---- accumulate ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shots", SHOTS)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("classes", CLASSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_accumulate_normalize(launch: Any, classes: int, dim: int, shots: int, dtype: type) -> None:
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
    assert np.array_equal(s_host, s_ref) and np.array_equal(c_host, c_ref)
    assert np.abs(p_host - p_ref).max() <= PROTO_ATOL

    # GPU state, touched rows only, the other rows of `out` untouched.
    d_sums, d_counts = launch.DeviceBuffer.from_host(sums), launch.DeviceBuffer.from_host(counts)
    out = launch.DeviceBuffer.from_host(np.full((classes, dim), 7.0, np.float32))
    launch.accumulate_normalize(launch.DeviceBuffer.from_host(x), y, d_sums, d_counts, out=out, touched_only=True)
    touched = np.isin(np.arange(classes), y)
    assert np.array_equal(d_sums.to_host(), s_ref) and np.array_equal(d_counts.to_host(), c_ref)
    got = out.to_host()
    assert np.abs(got[touched] - p_ref[touched]).max() <= PROTO_ATOL and (got[~touched] == 7.0).all()


@pytest.mark.parametrize("dim", [64, 1280])
def test_accumulate_with_shot_normalisation_is_what_the_heads_do(launch: Any, dim: int) -> None:
    rng = np.random.default_rng(dim)
    x = (3.0 * rng.normal(size=(5, dim))).astype(np.float32)
    y = np.full(5, 2, np.int32)
    s_ref, c_ref = np.zeros((4, dim), np.float32), np.zeros(4, np.int32)
    p_ref = ref.accumulate_normalize(ref.l2_normalize(x), y, s_ref, c_ref)
    d_sums, d_counts = launch.DeviceBuffer((4, dim), zero=True), launch.DeviceBuffer((4,), np.int32, zero=True)
    out = launch.accumulate_normalize(x, y, d_sums, d_counts, normalize_shots=True)
    assert np.abs(d_sums.to_host() - s_ref).max() <= 1e-6 and np.array_equal(d_counts.to_host(), c_ref)
    assert np.abs(out.to_host() - p_ref).max() <= PROTO_ATOL


# ---- classify -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shots", SHOTS)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("classes", CLASSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_classify(launch: Any, classes: int, dim: int, shots: int, dtype: type) -> None:
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
        assert_topk_close(r_idx, r_prob, idx, prob, all_prob)
        assert np.abs(best - r_best).max() <= PROB_ATOL
        near = np.abs(r_best - threshold) <= PROB_ATOL
        assert np.array_equal(unknown[~near], r_unknown[~near])


def test_classify_with_bias_and_similarity_rows(launch: Any) -> None:
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
    assert_topk_close(r_idx, r_prob, idx, prob, ref.softmax(logits))
    assert np.abs(best - r_best).max() <= PROB_ATOL and np.array_equal(unknown, r_best < 0.1)


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


def assert_weights_close(got: tuple[Any, Any], want: tuple[np.ndarray, np.ndarray], launch: Any) -> None:
    w, b = (launch.to_host(a) for a in got)
    tol = FT_RTOL * max(1.0, float(np.abs(want[0]).max()))
    assert np.abs(w - want[0]).max() <= tol and np.abs(b - want[1]).max() <= tol


@pytest.mark.parametrize("shots", SHOTS)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("classes", CLASSES)
def test_finetune_gram_and_plain(launch: Any, classes: int, dim: int, shots: int) -> None:
    x, y, w0, b0 = finetune_problem(classes, dim, shots, classes + dim + shots)
    steps = 100 if len(y) * len(y) * classes <= 2_000_000 else 10
    args = (0.5, 0.5, steps, 0.9, 0.01)
    want = ref.finetune_gram(x, y, w0, b0, *args)
    gram = launch.finetune_gram(x, y, w0, b0, *args)
    plain = launch.finetune(x, y, w0, b0, *args)
    assert_weights_close(gram, want, launch)
    assert_weights_close(plain, ref.finetune(x, y, w0, b0, *args), launch)
    assert_weights_close(gram, plain, launch)  # the Gram form matches the plain loop


@pytest.mark.parametrize("classes", [1, 5, 100])
@pytest.mark.parametrize("dim", [64, 1280])
def test_finetune_per_parameter_rates_and_ewc(launch: Any, classes: int, dim: int) -> None:
    x, y, w0, b0 = finetune_problem(classes, dim, 5, 11 * classes + dim)
    rng = np.random.default_rng(dim)
    lr = (0.5 * rng.uniform(0.5, 1.5, size=dim)).astype(np.float32)
    fisher = rng.uniform(0.0, 2.0, size=(classes, dim)).astype(np.float32)
    for lr_, l2 in ((lr, 0.0), (np.broadcast_to(lr, w0.shape), 0.0), (0.5, 0.01 * fisher), (lr, 0.01)):
        want = ref.finetune_gram(x, y, w0, b0, lr_, 0.5, 50, 0.9, l2)
        assert_weights_close(launch.finetune_gram(x, y, w0, b0, lr_, 0.5, 50, 0.9, l2), want, launch)


@pytest.mark.parametrize("dim", [640, 1280])
def test_finetune_float16_support_on_the_gpu(launch: Any, dim: int) -> None:
    x, y, w0, b0 = finetune_problem(5, dim, 5, dim)
    x16 = x.astype(np.float16)
    want = ref.finetune_gram(x16, y, w0, b0, 0.5, 0.5, 100, 0.9, 0.01)
    dev = [launch.DeviceBuffer.from_host(a) for a in (x16, y, w0, b0)]
    out = (launch.DeviceBuffer(w0.shape), launch.DeviceBuffer(b0.shape))
    got = launch.finetune_gram(dev[0], dev[1], dev[2], dev[3], 0.5, 0.5, 100, 0.9, 0.01, out=out)
    assert got[0] is out[0] and got[1] is out[1]
    assert_weights_close(got, want, launch)


# ---- zero copy ----------------------------------------------------------------------------------
def test_torch_cuda_tensors_go_to_the_kernels_without_a_host_copy(launch: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
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
        assert_topk_close(want[0], want[1], idx, prob, ref.softmax(np.float32(10.0) * (ref.l2_normalize(host) @ w.T)))
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
