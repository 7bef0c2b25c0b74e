"""Support-set adaptation references (edgefs.heads.adapt): gradients against finite differences, fits lower the loss."""

from __future__ import annotations

import numpy as np
import pytest

from edgefs.errors import EdgefsError
from edgefs.heads.adapt import LastLayer, align_fit, film_fit, ncc_loss_grad


def _clusters(rng: np.random.Generator, classes: int, per: int, dim: int,
              spread: float) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    labels = np.repeat(np.arange(classes), per)
    return (centres[labels] + spread * rng.standard_normal((len(labels), dim))).astype(np.float32), labels


def _directional(f, x: np.ndarray, direction: np.ndarray, h: float) -> float:
    x64 = x.astype(np.float64)
    return (f((x64 + h * direction).astype(np.float32)) - f((x64 - h * direction).astype(np.float32))) / (2 * h)


def test_ncc_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    emb, labels = _clusters(rng, 4, 3, 16, 1.0)
    loss, grad = ncc_loss_grad(emb, labels, 10.0)
    assert loss > 0
    for _ in range(3):
        d = rng.standard_normal(emb.shape)
        d /= np.linalg.norm(d)
        numeric = _directional(lambda e: ncc_loss_grad(e, labels, 10.0)[0], emb, d, 1e-2)
        assert float(np.sum(grad * d)) == pytest.approx(numeric, rel=0.03, abs=1e-4)


def test_ncc_refuses_a_missing_class_and_wrong_label_count():
    emb = np.ones((3, 4), np.float32)
    with pytest.raises(EdgefsError, match="every class present"):
        ncc_loss_grad(emb, np.array([0, 2, 2]), 10.0)
    with pytest.raises(EdgefsError, match="one label per sample"):
        ncc_loss_grad(emb, np.array([0, 1]), 10.0)


def _layer(rng: np.random.Generator, k: int = 6, d: int = 10, power: float = 0.5) -> LastLayer:
    return LastLayer(weight=rng.standard_normal((d, k)).astype(np.float32),
                     bias=rng.standard_normal(d).astype(np.float32), power=power,
                     center=rng.standard_normal(d).astype(np.float32) * 0.1)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_last_layer_backward_matches_finite_differences(power):
    rng = np.random.default_rng(1)
    layer = _layer(rng, power=power)
    x = rng.standard_normal((6, 5, 6)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    pre = layer.pre(x)
    gamma = (1 + 0.1 * rng.standard_normal(layer.dim)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(layer.dim)).astype(np.float32)

    def loss_of(g: np.ndarray) -> float:
        return ncc_loss_grad(layer.embed_pre(pre, g, beta), labels, 10.0)[0]

    _, demb = ncc_loss_grad(layer.embed_pre(pre, gamma, beta), labels, 10.0)
    dgamma = np.einsum("npd,npd->d", layer.backward(pre, gamma, beta, demb), pre)
    d = rng.standard_normal(layer.dim)
    d /= np.linalg.norm(d)
    # A small step: ReLU6's kinks make the loss piecewise smooth.
    assert float(dgamma @ d) == pytest.approx(_directional(loss_of, gamma, d, 1e-3), rel=0.05, abs=1e-3)


def test_last_layer_embed_is_the_pooled_clipped_powered_centred_map():
    rng = np.random.default_rng(2)
    layer = _layer(rng)
    x = rng.standard_normal((3, 4, 6)).astype(np.float32)
    pre = np.einsum("npk,dk->npd", x.astype(np.float64), layer.weight) + layer.bias
    expect = (np.clip(pre, 0, 6).mean(1) + 1e-6) ** 0.5 - layer.center
    np.testing.assert_allclose(layer.embed(x), expect, rtol=1e-5, atol=1e-6)
    with pytest.raises(EdgefsError, match=r"\(n, positions, 6\)"):
        layer.embed(np.zeros((3, 6), np.float32))


def _loss(emb: np.ndarray, labels: np.ndarray) -> float:
    return ncc_loss_grad(emb, labels, 10.0)[0]


@pytest.mark.parametrize("rank", [None, 4])
def test_alignment_lowers_the_support_loss_and_starts_at_identity(rank):
    rng = np.random.default_rng(3)
    emb, labels = _clusters(rng, 5, 4, 32, 1.5)
    fitted = align_fit(emb, labels, rank=rank, steps=30)
    assert _loss(fitted.apply(emb), labels) < 0.8 * _loss(emb, labels)
    none = align_fit(emb, labels, rank=rank, steps=0)
    np.testing.assert_allclose(none.apply(emb), emb, atol=1e-6)


def test_full_alignment_in_the_samples_span_equals_the_primal_descent():
    rng = np.random.default_rng(5)
    emb, labels = _clusters(rng, 3, 4, 20, 1.0)
    a = np.eye(20, dtype=np.float64)
    for _ in range(5):
        _, dz = ncc_loss_grad((emb @ a.T).astype(np.float32), labels, 10.0)
        a -= 0.5 * (dz.T.astype(np.float64) @ emb)
    fitted = align_fit(emb, labels, steps=5, lr=0.5)
    np.testing.assert_allclose(fitted.matrix(), a, atol=2e-5)
    np.testing.assert_allclose(fitted.apply(emb), emb @ a.T, atol=2e-5)


def test_film_fit_lowers_the_support_loss_and_zero_steps_is_the_exported_layer():
    rng = np.random.default_rng(4)
    layer = _layer(rng, k=8, d=24)
    x = rng.standard_normal((12, 9, 8)).astype(np.float32)
    labels = np.repeat(np.arange(4), 3)
    before = _loss(layer.embed(x), labels)
    gamma, beta, weight = film_fit(layer, x, labels, steps=30, lr_gamma=20.0, lr_beta=20.0)
    assert _loss(layer.embed(x, gamma, beta), labels) < 0.9 * before
    np.testing.assert_array_equal(weight, layer.weight)
    g0, b0, _ = film_fit(layer, x, labels, steps=0)
    np.testing.assert_array_equal(layer.embed(x, g0, b0), layer.embed(x))
    *_, w = film_fit(layer, x, labels, steps=10, lr_gamma=0.0, lr_beta=0.0, lr_weight=0.05)
    assert _loss(layer.embed(x, weight=w), labels) < before
