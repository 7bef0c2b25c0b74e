"""The MAML family: the device reproduces the inner loop, the meta-gradients are what they claim."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

from edgefs.backbones import build_backbone
from edgefs.data.episodes import EpisodeSampler, Protocol, fixed_episodes
from edgefs.data.images import open_split
from edgefs.errors import ConfigError
from edgefs.heads import HeadSpec, build_head
from edgefs.heads.reference import finetune, l2_normalize
from edgefs.methods import build_method
from edgefs.methods.maml import MAMLFamily, batchnorm_mode, evaluate_on_images, head_cross_entropy
from edgefs.train.checkpoint import load_checkpoint, save_checkpoint
from edgefs.train.trainer import embedder

D = 64  # conv4 at 28 px
FAMILY = ("maml", "fomaml", "reptile", "metasgd")
# Torch and NumPy run the same float32 steps and differ by summation order only (the device
# head takes the Gram-matrix route): logits agree to this fraction of their largest magnitude.
LOGIT_TOL = 1e-5


def assert_logits_close(got: np.ndarray, want: np.ndarray, rel: float = LOGIT_TOL) -> None:
    scale = max(1.0, float(np.abs(want).max()))
    assert float(np.abs(got - want).max()) <= rel * scale, (float(np.abs(got - want).max()), scale)


def method(name: str, **options: object) -> MAMLFamily:
    torch.manual_seed(0)
    built = build_method(name, build_backbone("conv4"), **options)
    assert isinstance(built, MAMLFamily)
    return built


def embedded_episode(seed: int, ways: int = 5, shots: int = 3, queries: int = 4, dtype=np.float32):
    """Clustered raw embeddings (not unit length): support (S, D), labels, queries (Q, D), labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ways, D))
    s_lab = np.repeat(np.arange(ways), shots)
    q_lab = np.repeat(np.arange(ways), queries)
    support = (centres[s_lab] + 0.8 * rng.normal(size=(len(s_lab), D))) * rng.uniform(0.5, 3, (len(s_lab), 1))
    query = centres[q_lab] + 0.8 * rng.normal(size=(len(q_lab), D))
    return support.astype(dtype), s_lab, query.astype(dtype), q_lab


# ---- the device reproduces the training-time inner loop ---------------------------------------
@pytest.mark.parametrize("init", ["zero", "imprint"])
@pytest.mark.parametrize("name", FAMILY)
def test_device_head_reproduces_the_torch_inner_loop(name: str, init: str, tmp_path: Path) -> None:
    m = method(name, init=init, steps=4, lr=25.0, lr_b=4.0)
    with torch.no_grad():  # rates and temperature away from their defaults
        m.log_lr.add_(0.3 * torch.randn_like(m.log_lr))
        m.log_temperature.fill_(float(np.log(7.0)))
    support, s_lab, queries, _ = embedded_episode(0)
    with torch.no_grad():
        fast = m.adapt_head(torch.from_numpy(support), torch.from_numpy(s_lab), 5)
        torch_logits = m.head_logits(torch.from_numpy(queries), fast).numpy()

    # The spec, saved and loaded, builds the device head that enrolls the 5 classes and fine-tunes.
    m.head_spec().save(tmp_path / "head")
    spec = HeadSpec.load(tmp_path / "head")
    assert spec.head_type == "finetune" and spec.params["steps"] == 4 and spec.params["momentum"] == 0.0
    assert ("w_init" in spec.arrays) == (init == "zero") and ("lr" in spec.arrays) == (name == "metasgd")
    head = build_head(spec, D)
    head.add_classes({f"c{c}": support[s_lab == c] for c in range(5)})
    assert_logits_close(head.scores(queries), torch_logits)
    assert_logits_close(m.score_embeddings(support, s_lab, queries, 5), torch_logits)

    # ... and that is the plain reference loop from the documented start rows.
    x = l2_normalize(support)
    if init == "zero":
        w0 = np.zeros((5, D), np.float32)
    else:
        w0 = 7.0 * l2_normalize(np.stack([x[s_lab == c].mean(0) for c in range(5)]))
    lr = m.log_lr.detach().exp().numpy()
    lr_w = np.broadcast_to(lr, w0.shape) if lr.ndim else float(lr)
    w, b = finetune(x, s_lab.astype(np.int32), w0.astype(np.float32), np.zeros(5, np.float32), lr_w,
                    float(m.log_lr_b.detach().exp()), 4, 0.0, 0.0)
    assert_logits_close(l2_normalize(queries) @ w.T + b, torch_logits)


def test_a_start_row_shared_by_every_class_changes_no_prediction() -> None:
    """Why ``init="zero"`` ships zeros rather than a learned row: a row (and bias) shared by the
    interchangeable classes adds one value per query to every class's logit, at every step."""
    support, s_lab, queries, _ = embedded_episode(7)
    rng = np.random.default_rng(8)
    params = {"lr": 20.0, "lr_b": 4.0, "steps": 5, "momentum": 0.0, "l2": 0.0, "penalty": "none"}
    rates = rng.uniform(5, 30, D).astype(np.float32)
    scores = []
    for row, bias in ((np.zeros(D), 0.0), (3 * rng.normal(size=D), 1.7)):
        arrays = {"w_init": row.astype(np.float32), "b_init": np.array([bias], np.float32), "lr": rates}
        head = build_head(HeadSpec("finetune", params, arrays), D)
        head.add_classes({f"c{c}": support[s_lab == c] for c in range(5)})
        scores.append(head.scores(queries))
    shift = scores[1] - scores[0]
    assert float(np.abs(shift).max()) > 0.1  # the logits moved ...
    assert float(np.abs(shift - shift[:, :1]).max()) < 1e-4  # ... by the same amount for every class


def test_images_through_the_method_equal_the_device_rule_on_embeddings(stroke_data: Path) -> None:
    """process_support_set/forward (what evaluate_on_images runs) is the device's head-only rule."""
    m = method("metasgd", init="imprint")
    m.eval()
    data = open_split(stroke_data, "test", 1, 28)
    ep = EpisodeSampler(data, Protocol(5, 2, 2), seed=4).sample()
    s_img, q_img = data.images[ep.support], data.images[ep.query]
    m.process_support_set(torch.from_numpy(s_img), torch.from_numpy(ep.support_labels()))
    with torch.no_grad():
        got = m(torch.from_numpy(q_img)).numpy()
    embed = embedder(m, torch.device("cpu"))
    device = m.score_embeddings(embed(s_img), ep.support_labels(), embed(q_img), 5)
    # Looser: the embeddings come from batches of another size (conv summation order), and the
    # inner steps carry that difference along.
    assert_logits_close(got, device, rel=10 * LOGIT_TOL)


# ---- second order vs first order ---------------------------------------------------------------
def meta_loss(m: MAMLFamily, support: torch.Tensor, queries: torch.Tensor, s_lab, q_lab) -> torch.Tensor:
    return m.head_meta_loss(support, torch.from_numpy(s_lab), queries, torch.from_numpy(q_lab), 5)[0]


def test_second_order_gradient_is_the_derivative_of_the_adapted_query_loss() -> None:
    m = method("maml", steps=3, lr=20.0, lr_b=5.0).double()
    s, s_lab, q, q_lab = embedded_episode(1, dtype=np.float64)
    support = torch.from_numpy(s).requires_grad_()
    (g,) = torch.autograd.grad(meta_loss(m, support, torch.from_numpy(q), s_lab, q_lab), support)
    rng = np.random.default_rng(2)
    eps = 1e-6
    with torch.no_grad():
        for _ in range(3):
            v = torch.from_numpy(rng.normal(size=s.shape))
            fd = (meta_loss(m, support + eps * v, torch.from_numpy(q), s_lab, q_lab)
                  - meta_loss(m, support - eps * v, torch.from_numpy(q), s_lab, q_lab)) / (2 * eps)
            assert float((g * v).sum()) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("init", ["zero", "imprint"])
def test_first_order_drops_the_path_through_the_inner_gradients(init: str) -> None:
    options = {"steps": 3, "lr": 20.0, "lr_b": 5.0, "init": init}
    second, first = method("maml", **options).double(), method("fomaml", **options).double()
    s, s_lab, q, q_lab = embedded_episode(3, dtype=np.float64)
    grads = {}
    for label, m in (("second", second), ("first", first)):
        support, queries = torch.from_numpy(s).requires_grad_(), torch.from_numpy(q).requires_grad_()
        loss = meta_loss(m, support, queries, s_lab, q_lab)
        wrt = {"support": support, "queries": queries, "lr": m.log_lr}
        if init == "imprint":
            wrt["temperature"] = m.log_temperature  # learned only for imprinted rows
        grads[label] = dict(zip(wrt, torch.autograd.grad(loss, tuple(wrt.values()), allow_unused=True), strict=True))
        grads[label]["loss"] = loss.detach()
    # Same adapted head: the same loss and the same gradient on the query side.
    assert torch.equal(grads["first"]["loss"], grads["second"]["loss"])
    torch.testing.assert_close(grads["first"]["queries"], grads["second"]["queries"], rtol=1e-12, atol=1e-12)
    # The support set reaches the loss through the inner gradients, which first order drops:
    # with zero start rows nothing else is left; imprinted rows keep their direct path.
    assert float(grads["second"]["support"].abs().max()) > 0
    if init == "zero":
        assert grads["first"]["support"] is None
    else:
        assert float(grads["first"]["support"].abs().max()) > 0
        assert not torch.allclose(grads["first"]["support"], grads["second"]["support"], rtol=1e-3)
    assert not torch.allclose(grads["first"]["lr"], grads["second"]["lr"], rtol=1e-3)


def test_with_one_step_the_rate_gradient_needs_no_second_order() -> None:
    """W1 = W0 - lr * g0: d loss / d lr = -<dL/dW1, g0> in both orders."""
    options = {"steps": 1, "lr": 20.0, "lr_b": 5.0}
    s, s_lab, q, q_lab = embedded_episode(5, dtype=np.float64)
    rates = []
    for name in ("maml", "fomaml"):
        m = method(name, **options).double()
        loss = meta_loss(m, torch.from_numpy(s), torch.from_numpy(q), s_lab, q_lab)
        rates.append(torch.autograd.grad(loss, (m.log_lr, m.log_lr_b)))
    for a, b in zip(*rates, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_reptile_gradient_is_first_order_maml_plus_the_support_steps() -> None:
    options = {"steps": 3, "lr": 20.0, "lr_b": 5.0, "learn_lr": False, "init": "zero"}
    reptile, fomaml = method("reptile", **options).double(), method("fomaml", **options).double()
    s, s_lab, q, q_lab = embedded_episode(6, dtype=np.float64)
    support, queries = torch.from_numpy(s).requires_grad_(), torch.from_numpy(q).requires_grad_()
    loss_r = meta_loss(reptile, support, queries, s_lab, q_lab)
    loss_f = meta_loss(fomaml, support, queries, s_lab, q_lab)
    # Reptile logs the adapted query loss.
    assert float(loss_r.detach()) == pytest.approx(float(loss_f.detach()), rel=1e-12)
    g_r = torch.autograd.grad(loss_r, (support, queries))
    g_f = torch.autograd.grad(loss_f, (support, queries), allow_unused=True)
    # The support losses at each iterate W_0..W_{k-1}, differentiated at fixed W.
    x_n = torch.nn.functional.normalize(support, dim=1)
    labels = torch.from_numpy(s_lab)
    iterates, _ = fomaml.inner_loop(fomaml.initial_head(x_n.detach(), labels, 5), head_cross_entropy,
                                    (x_n.detach(), labels), "first")
    steps = sum(head_cross_entropy({k: v.detach() for k, v in it.items()}, x_n, labels) for it in iterates[:-1])
    (g_steps,) = torch.autograd.grad(steps, support)
    assert g_f[0] is None  # zero start rows: first-order MAML gives the support nothing
    torch.testing.assert_close(g_r[0], g_steps, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_r[1], g_f[1], rtol=1e-10, atol=1e-12)


# ---- training on images ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_split(stroke_data: Path):
    return open_split(stroke_data, "train", 1, 28)


def episode_tensors(data, seed: int) -> tuple[torch.Tensor, ...]:
    ep = EpisodeSampler(data, Protocol(5, 1, 3), seed=seed).sample()
    return (torch.from_numpy(data.images[ep.support]), torch.from_numpy(ep.support_labels()),
            torch.from_numpy(data.images[ep.query]), torch.from_numpy(ep.query_labels()))


def test_metasgd_learns_a_rate_per_dimension(train_split) -> None:
    m = method("metasgd", lr=10.0)
    plain = method("maml", lr=10.0)
    assert m.log_lr.shape == (D,) and plain.log_lr.shape == ()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    start = m.log_lr.detach().clone()
    for seed in range(8):
        loss, _ = m.episode_loss(*episode_tensors(train_split, seed))
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = m.log_lr.detach() - start
    assert float(moved.abs().min()) > 0 and float(moved.std()) > 1e-3  # each rate its own way
    rates = m.head_spec().arrays["lr"]
    assert rates.shape == (D,) and rates.dtype == np.float32
    np.testing.assert_allclose(rates, m.log_lr.detach().exp().numpy(), rtol=1e-6)
    head = build_head(m.head_spec(), D)
    np.testing.assert_array_equal(head._lr_param, rates)  # the device head runs these rates


@pytest.mark.parametrize("name", FAMILY)
def test_full_network_inner_loop_trains_and_adapts_the_backbone(name: str, train_split, stroke_data: Path,
                                                                 tmp_path: Path) -> None:
    m = method(name, inner="full", steps=2, body_lr=0.05)
    batch = episode_tensors(train_split, 0)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss, _ = m.episode_loss(*batch)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses
    grads = [p.grad for p in m.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    # Per-episode adaptation really moves the backbone; the head spec is still the device fine-tune head.
    m.eval()
    m.process_support_set(batch[0], batch[1])
    assert m._fast is not None
    body = dict(m.backbone.named_parameters())
    assert any(not torch.equal(m._fast[f"body.{k}"], v) for k, v in body.items())
    assert m.head_spec().head_type == "finetune"
    data = open_split(stroke_data, "test", 1, 28)
    acc = evaluate_on_images(m, data, fixed_episodes(data, Protocol(5, 1, 2), 4, seed=0, path=None))
    assert 0.0 <= acc.mean <= 1.0 and acc.episodes == 4

    # The checkpoint rebuilds the full variant, its per-parameter rates included.
    save_checkpoint(tmp_path / "m.pt", m, {"episode": 6})
    again, doc = load_checkpoint(tmp_path / "m.pt")
    assert doc["method"]["name"] == name and doc["method"]["options"]["inner"] == "full"
    for key, value in m.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_full_variant_normalises_with_the_support_statistics(train_split) -> None:
    """Queries see the support set's batch-norm statistics: as a train-mode pass of the support
    batch, and one query's logits do not depend on the other queries."""
    m = method("maml", inner="full", steps=2)
    s_img, s_lab, q_img, _ = episode_tensors(train_split, 2)
    running = {k: v.clone() for k, v in m.backbone.named_buffers()}
    m.eval()
    m.process_support_set(s_img, s_lab)
    assert all(torch.equal(v, running[k]) for k, v in m.backbone.named_buffers())  # left untouched
    with torch.no_grad():
        got = m._full_logits(m._fast, m._norm, running, s_img)
        with batchnorm_mode(m.backbone, True):
            emb = functional_call(m.backbone, {**m._body(m._fast), **{k: v.clone() for k, v in running.items()}},
                                  (s_img,))
        torch.testing.assert_close(got, m.head_logits(emb, m._fast), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m(q_img[:1]), m(q_img)[:1], rtol=1e-5, atol=1e-5)


def test_head_and_full_inner_loops_differ_on_the_same_episode(train_split) -> None:
    batch = episode_tensors(train_split, 1)
    head, full = method("maml"), method("maml", inner="full")
    full.load_state_dict(head.state_dict(), strict=False)  # same backbone and rates
    for m in (head, full):
        m.eval()
        m.process_support_set(batch[0], batch[1])
    with torch.no_grad():
        a, b = head(batch[2]), full(batch[2])
    assert a.shape == b.shape == (15, 5) and not torch.allclose(a, b)


# ---- bad options -------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "options", "message"), [
    ("maml", {"inner": "middle"}, r"inner='middle' is not valid; choose one of head, full"),
    ("fomaml", {"init": "random"}, r"init='random' is not valid; choose one of zero, imprint"),
    ("metasgd", {"steps": 0}, r"steps=0 is not valid; give an integer >= 1"),
    ("maml", {"lr": -1.0}, r"lr=-1.0 is not valid; give a number > 0"),
    ("reptile", {"learn_lr": True}, r"reptile cannot learn .*learn_lr: false.*maml, fomaml or metasgd"),
    ("metasgd", {"learn_lr": False}, r"metasgd learns .*learn_lr: true"),
    ("maml", {"outer_lr": 1.0}, r"no option 'outer_lr'; its options: inner, init, steps, lr, lr_b, body_lr"),
])
def test_bad_options_are_refused_with_the_valid_choices(name: str, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_method(name, build_backbone("conv4"), **options)
