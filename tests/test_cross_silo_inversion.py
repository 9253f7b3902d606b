"""Gradient inversion (benchmarks/cross_silo/inversion.py) and its image scores (image_metrics.py), on tiny models."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.cross_silo import image_metrics, inversion, model

MLP = model.ModelSpec("mlp", (64,), 4, hidden=(32,))  # an 8x8 image, flattened
CNN = model.ModelSpec("cnn", (16, 16, 1), 3)  # the benchmark's CNN at its smallest input
ATTACK = inversion.AttackConfig(iterations=500)


def smooth_image(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A blob on a ramp in [0, 1]: image-like (smooth, with an edge), not noise."""
    h, w = shape[:2]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h - 1, 1)
    cy, cx = rng.uniform(0.3, 0.7, 2)
    img = 0.1 + 0.2 * xx + 0.7 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05)
    return np.clip(img, 0, 1).reshape(shape).astype(np.float32)


def mean_loss_grad(spec, params, x, y):
    return jax.grad(lambda p: jnp.mean(model.example_losses(spec, p, jnp.asarray(x), jnp.asarray(y))))(params)


# ---------------------------------------------------------------------------------------------------- the attack


def attack_mlp(update, labels, local_steps=1, learning_rate=0.01, batch_size=None, config=ATTACK, spec=MLP):
    params = model.init(spec, jax.random.key(0))
    return inversion.invert(
        spec, params, update, labels, local_steps=local_steps, learning_rate=learning_rate, batch_size=batch_size,
        config=config, seed=0,
    )  # fmt: skip


def mlp_update(x, y, local_steps=1, learning_rate=0.01, batch_size=None, spec=MLP):
    params = model.init(spec, jax.random.key(0))
    return inversion.client_update(spec, params, x, y, local_steps, learning_rate, batch_size)


IMAGE = smooth_image((8, 8), seed=1).reshape(1, 64)


def test_the_attack_recovers_a_single_image_of_a_tiny_model_from_its_update():
    y = np.array([2], np.int32)
    rec = attack_mlp(mlp_update(IMAGE, y), None)  # the label too is read off the update
    assert rec.shape == IMAGE.shape
    assert image_metrics.psnr(IMAGE, rec) > 30.0
    assert image_metrics.psnr(IMAGE, np.full_like(IMAGE, IMAGE.mean())) < 15.0  # 30 dB is far from a flat guess


def test_the_attack_simulates_several_local_steps_on_minibatches():
    x = np.concatenate([IMAGE, smooth_image((8, 8), seed=2).reshape(1, 64)])
    y = np.array([2, 0], np.int32)
    update = mlp_update(x, y, local_steps=3, learning_rate=0.1, batch_size=1)  # x[0], x[1], x[0]
    rec = attack_mlp(update, y, local_steps=3, learning_rate=0.1, batch_size=1)
    assert np.all(image_metrics.psnr(x, image_metrics.match(x, rec)) > 30.0)


def test_restarts_keep_the_one_of_smallest_loss():
    # with 16 hidden units a single run from this start ends in a dead-ReLU local minimum (cosine loss 0.03,
    # about 20 dB); among 4 restarts scored by their loss the exact one wins
    narrow = model.ModelSpec("mlp", (64,), 4, hidden=(16,))
    update = mlp_update(IMAGE, np.array([2]), spec=narrow)
    one = attack_mlp(update, None, config=inversion.AttackConfig(iterations=1500), spec=narrow)
    four = attack_mlp(update, None, config=inversion.AttackConfig(iterations=1500, restarts=4), spec=narrow)
    assert image_metrics.psnr(IMAGE, one) < 25.0 < 30.0 < image_metrics.psnr(IMAGE, four)


def test_clipping_alone_hides_nothing_of_a_single_image_but_dp_noise_does():
    params = model.init(MLP, jax.random.key(0))
    y = np.array([2], np.int32)

    def dp_update(clip, sigma):
        return inversion.dp_client_update(
            MLP, params, IMAGE, y, 1, 0.01, clip_norm=clip, noise_multiplier=sigma, seed=0
        )  # fmt: skip

    # clipping one example's gradient only rescales it, and the cosine loss ignores scale
    assert image_metrics.psnr(IMAGE, attack_mlp(dp_update(0.01, 0.0), y)) > 30.0
    # noise sigma C = 1 against a gradient of norm at most C = 1, spread over ~2,200 parameters
    assert image_metrics.psnr(IMAGE, attack_mlp(dp_update(1.0, 1.0), y)) < 15.0


@pytest.mark.parametrize("local_steps", [1, 3])
def test_the_label_of_a_single_image_is_read_off_the_last_bias_update(local_steps):
    params = model.init(CNN, jax.random.key(5))
    for label in range(CNN.num_classes):
        x = smooth_image((16, 16, 1), seed=label)[None]
        update = inversion.client_update(CNN, params, x, np.array([label]), local_steps, learning_rate=0.1)
        assert inversion.recover_labels(CNN, update).tolist() == [label]
    with pytest.raises(ValueError, match="known labels"):
        inversion.recover_labels(CNN, update, n=2)


# ---------------------------------------------------------------------------------------------------- the updates


def test_one_local_step_sends_lr_times_the_gradient_and_more_steps_follow_sgd():
    params = model.init(MLP, jax.random.key(1))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 64)).astype(np.float32)
    y = np.array([0, 1, 2, 3], np.int32)
    lr = 0.5
    one = inversion.client_update(MLP, params, x, y, local_steps=1, learning_rate=lr)
    grad = mean_loss_grad(MLP, params, x, y)
    for name in params:
        np.testing.assert_allclose(one[name], lr * grad[name], rtol=1e-5, atol=1e-7)
    # three steps on minibatches of 2 taken in turn: x[0:2], x[2:4], x[0:2]
    p = params
    for sl in (slice(0, 2), slice(2, 4), slice(0, 2)):
        g = mean_loss_grad(MLP, p, x[sl], y[sl])
        p = {k: p[k] - lr * g[k] for k in p}
    three = inversion.client_update(MLP, params, x, y, local_steps=3, learning_rate=lr, batch_size=2)
    for name in params:
        np.testing.assert_allclose(three[name], params[name] - p[name], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="divide"):
        inversion.client_update(MLP, params, x, y, local_steps=1, learning_rate=lr, batch_size=3)


def test_a_dp_client_clips_each_example_and_adds_seeded_noise():
    params = model.init(MLP, jax.random.key(2))
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (2, 64)).astype(np.float32)
    y = np.array([1, 3], np.int32)
    lr = 0.1

    def dp(clip, sigma, seed=0):
        return inversion.dp_client_update(MLP, params, x, y, 1, lr, clip_norm=clip, noise_multiplier=sigma, seed=seed)

    plain = inversion.client_update(MLP, params, x, y, 1, lr)
    unclipped = dp(1e6, 0.0)  # no clipping, no noise: plain FedAvg
    for name in params:
        np.testing.assert_allclose(unclipped[name], plain[name], rtol=1e-5, atol=1e-7)
    # each example's gradient clipped to C = 1e-3 (far below its norm): the update is lr * mean of unit-C vectors
    per_example = [mean_loss_grad(MLP, params, x[i : i + 1], y[i : i + 1]) for i in range(2)]
    norms = [np.sqrt(sum(float(jnp.sum(g[k] ** 2)) for k in g)) for g in per_example]
    clipped = dp(1e-3, 0.0)
    for name in params:
        expected = lr * sum(g[name] * 1e-3 / n for g, n in zip(per_example, norms)) / 2
        np.testing.assert_allclose(clipped[name], expected, rtol=1e-3, atol=1e-8)
    noisy, again, other = dp(1.0, 1.0, seed=7), dp(1.0, 1.0, seed=7), dp(1.0, 1.0, seed=8)
    name = "dense0/w"
    np.testing.assert_array_equal(noisy[name], again[name])
    assert not np.allclose(noisy[name], other[name])
    # the noise is N(0, (sigma C)^2) / b per entry, times lr: its spread shows in the largest layer
    assert np.std(np.asarray(noisy[name] - plain[name])) == pytest.approx(lr * 1.0 / 2, rel=0.1)


# ---------------------------------------------------------------------------------------------------- the scores


def test_psnr_known_values():
    a = np.zeros((4, 4, 1))
    assert image_metrics.psnr(a, a) == np.inf
    assert image_metrics.psnr(a, a + 0.1) == pytest.approx(20.0)  # MSE 0.01
    assert image_metrics.psnr(a, a + 0.01) == pytest.approx(40.0)
    batch = np.stack([a, a + 0.1, a + 0.5])
    np.testing.assert_allclose(image_metrics.psnr(np.zeros_like(batch), batch), [np.inf, 20.0, 10 * np.log10(4)])


def test_ssim_known_values_symmetry_and_noise():
    a = np.full((16, 16, 1), 0.2)
    b = np.full((16, 16, 1), 0.6)
    c1 = (0.01) ** 2
    # flat images: no variance, so SSIM is the luminance term alone
    assert image_metrics.ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1))
    img = smooth_image((28, 28, 1), seed=0)
    assert image_metrics.ssim(img, img) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = [np.clip(img + s * rng.standard_normal(img.shape), 0, 1) for s in (0.02, 0.1, 0.3)]
    scores = [image_metrics.ssim(img, n) for n in noisy]
    assert 1.0 > scores[0] > scores[1] > scores[2]
    assert image_metrics.ssim(noisy[1], img) == pytest.approx(scores[1])  # symmetric
    # an 11x11 image is one window: SSIM from the Gaussian-weighted moments directly
    x, y = rng.uniform(0, 1, (11, 11)), rng.uniform(0, 1, (11, 11))
    r = np.arange(11) - 5
    w = np.outer(np.exp(-(r**2) / 4.5), np.exp(-(r**2) / 4.5))
    w /= w.sum()
    mx, my = np.sum(w * x), np.sum(w * y)
    vx, vy, cxy = np.sum(w * (x - mx) ** 2), np.sum(w * (y - my) ** 2), np.sum(w * (x - mx) * (y - my))
    c2 = 0.03**2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert image_metrics.ssim(x, y) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="11x11"):
        image_metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_a_batch_reconstruction_is_paired_with_its_true_images_by_psnr():
    true = np.stack([smooth_image((16, 16, 1), seed=s) for s in range(4)])
    rng = np.random.default_rng(0)
    rec = np.clip(true + 0.05 * rng.standard_normal(true.shape), 0, 1)[[2, 0, 3, 1]]
    paired = image_metrics.match(true, rec)
    assert np.all(image_metrics.psnr(true, paired) > 20.0)
    np.testing.assert_array_equal(paired, rec[[1, 3, 0, 2]])


def test_nearest_samples_finds_a_planted_copy_among_streamed_chunks():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 1, (3, 28, 28, 1))
    planted = (4, 17)  # chunk 4, row 17 holds an exact copy of true[1]
    consumed = []

    def chunks():
        for i in range(6):
            chunk = rng.uniform(0, 1, (50, 784)).astype(np.float32)
            if i == planted[0]:
                chunk[planted[1]] = true[1].reshape(-1)
            consumed.append(i)
            yield chunk

    best, best_psnr, best_ssim = image_metrics.nearest_samples(true, chunks())
    assert consumed == list(range(6))
    assert best.shape == true.shape
    np.testing.assert_allclose(best[1], true[1].astype(np.float32), atol=0)
    assert best_psnr[1] > 60.0  # float32 storage of a float64 image: exact to ~1e-8
    assert best_ssim[1] == pytest.approx(1.0, abs=1e-6)
    # the others: random images, so about 10 log10(1 / (2 var)) = 7.8 dB, and the best of 300 a little above
    assert np.all((best_psnr[[0, 2]] > 7.0) & (best_psnr[[0, 2]] < 12.0))


# ---------------------------------------------------------------------------------------------------- the runner


def test_run_attacks_reports_every_setting_and_the_figure_is_drawn(tmp_path):
    params = model.init(CNN, jax.random.key(6))
    images = np.stack([smooth_image((16, 16, 1), seed=s) for s in range(2)])
    labels = np.array([0, 2], np.int32)
    results, recs = inversion.run_attacks(
        CNN, params, images, labels, batch_sizes=(1, 2), local_steps=(1,), dp=(1.0, 1.0),
        config=inversion.AttackConfig(iterations=50), seed=0,
    )  # fmt: skip
    settings = [("fedavg", "batch1-steps1"), ("fedavg", "batch2-steps1"), ("dp-fedavg", "batch1-steps1")]
    assert [(arm, key) for arm in ("fedavg", "dp-fedavg") for key in results[arm]] == settings
    assert list(recs) == ["FedAvg b=1 steps=1", "FedAvg b=2 steps=1", "DP-FedAvg (sigma=1, C=1) b=1 steps=1"]
    for arm, key in settings:
        result = results[arm][key]
        rec = recs[result["label"]]
        assert rec.shape == images.shape
        np.testing.assert_allclose(result["psnr_each"], image_metrics.psnr(images, rec))
        np.testing.assert_allclose(result["ssim_each"], image_metrics.ssim(images, rec))
        assert result["psnr"] == pytest.approx(np.mean(result["psnr_each"]))
    assert results["fedavg"]["batch1-steps1"]["labels_recovered_right"] == 1.0
    assert results["fedavg"]["batch2-steps1"]["labels"] == "known to the attacker"
    assert results["dp-fedavg"]["batch1-steps1"]["noise_multiplier"] == 1.0
    json.dumps(results)
    path = tmp_path / "inversion.png"
    inversion.figure(images, recs, images[::-1], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
