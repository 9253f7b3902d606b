"""benchmarks/disguise.py's metrics and report on tiny arrays (no training): each leakage figure reads 'hidden' where
nothing distinguishes the images and 'leaked' where everything does."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import _disguise_metrics as m


def blobs(n: int, dim: int, seed: int, gap: float):
    """Two classes of n images each, [2n, dim] in [0, 1], whose means differ by `gap` in every pixel."""
    rng = np.random.default_rng(seed)
    x = np.clip(0.4 + 0.05 * rng.standard_normal((2 * n, dim)), 0, 1)
    y = np.r_[np.zeros(n, int), np.ones(n, int)]
    x[y == 1] += gap
    return np.clip(x, 0, 1).astype(np.float32), y


def test_best_match_accuracy_is_invariant_to_renaming_clusters():
    truth = np.array([0, 0, 0, 1, 1, 1])
    assert m.best_match_accuracy(truth, np.array([5, 5, 5, 2, 2, 2])) == 1.0
    assert m.best_match_accuracy(truth, np.array([1, 1, 0, 0, 0, 0])) == pytest.approx(5 / 6)
    assert m.best_match_accuracy(truth, np.array([0, 1, 0, 1, 0, 1])) == pytest.approx(4 / 6)


def test_probe_auc_is_near_chance_for_the_same_distribution_and_high_for_another():
    genuine, _ = blobs(60, 16, 0, 0.0)
    same, _ = blobs(60, 16, 1, 0.0)
    shifted = same + 0.3
    near = m.probe_auc(same[:60], genuine[:60], same[60:], genuine[60:], seed=0)
    far = m.probe_auc(shifted[:60], genuine[:60], shifted[60:], genuine[60:], seed=0)
    assert 0.3 < near["logreg"] < 0.7
    assert far["max"] > 0.95 and far["max"] == max(far["logreg"], far["mlp"])


def test_clustering_recovers_separated_classes_and_not_mixed_ones():
    x, y = blobs(30, 16, 2, 0.4)
    assert m.cluster_leakage(x, y, seed=0) == {"ari": pytest.approx(1.0), "accuracy": 1.0}
    mixed = m.cluster_leakage(x, np.random.default_rng(0).permutation(y), seed=0)
    assert abs(mixed["ari"]) < 0.2 and mixed["accuracy"] < 0.75


def test_few_shot_names_received_images_and_their_labels():
    x, hidden = blobs(40, 16, 3, 0.4)
    known_x, known_y = blobs(10, 16, 4, 0.4)
    public = hidden + 2  # the renamed labels the cloud receives
    out = m.few_shot_leakage(x, public, hidden, known_x, known_y, seed=0)
    assert out == {"accuracy": 1.0, "label_naming_accuracy": 1.0}
    # Images that do not look like their hidden class leave the attacker at chance or worse.
    lying = m.few_shot_leakage(x, public, 1 - hidden, known_x, known_y, seed=0)
    assert lying["accuracy"] == 0.0 and lying["label_naming_accuracy"] == 0.0


def test_few_shot_sample_draws_per_class():
    labels = np.array([0] * 15 + [1] * 12)
    picked = m.few_shot_sample(labels, 10, seed=0)
    assert np.bincount(labels[picked]).tolist() == [10, 10] and len(set(picked)) == 20


def test_report_tables_ratios_and_aim():
    from benchmarks import disguise

    leak = {
        "probe_auc": {"logreg": 0.99, "mlp": 0.98, "max": 0.99},
        "clustering": {"ari": 0.9, "accuracy": 0.97},
        "few_shot": {"accuracy": 0.8, "label_naming_accuracy": 1.0},
    }
    reference = {
        "name": "no disguise",
        "receives": "the real hidden images, public labels",
        "pipeline_accuracy": 1.0,
        "leakage": {
            "probe_auc": {"logreg": 1.0, "mlp": 1.0, "max": 1.0},
            "clustering": {"ari": 0.9, "accuracy": 0.97},
            "few_shot": {"accuracy": 1.0, "label_naming_accuracy": 1.0},
        },
    }
    arm = {
        "name": "translator eps 10",
        "receives": "translated hidden images, public labels",
        "pipeline_accuracy": 0.9,
        "translator_head_accuracy": 0.95,
        "cloud_on_real_public": 0.93,
        "classifier_file": "x",
        "train_s": 100.0,
        "train_cpu_s": 180.0,
        "leakage": leak,
    }
    results = {
        "date": "today",
        "machine": {"cores": 2, "cpu": "cpu", "jax": "0", "backend": "cpu", "devices": ["cpu"], "load_average": [1]},
        "args": {"cloud": "logreg", "seed": 0, "quick": True},
        "datasets": [
            {
                "dataset": "digits",
                "classes": {"hidden": ["0", "1"], "public": ["2", "3"]},
                "sizes": {"train": 540, "hidden_train": 270, "hidden_test": 90},
                "direct_accuracy": 1.0,
                "arms": [reference, arm, {"name": "translator eps 1", "receives": "not run: missing"}],
            }
        ],
    }
    text = disguise.report(results)
    row = next(line for line in text.splitlines() if line.startswith("| translator eps 10"))
    assert "| 90.0 | 100.0 | 0.900 | 0.990 | 0.900 | 97.0 | 80.0 | 100.0 | 100.0 |" in row
    assert "NOT MET (90.0 %, 3.0 CPU-minutes)" in text
    # leakage left: (0.99 - 0.5) / (1 - 0.5), ARI 0.9 / 0.9, (0.8 - 0.5) / 0.5, (1 - 0.5) / 0.5
    assert "| translator eps 10 | 0.98 | 1.00 | 0.60 | 1.00 |" in text
    assert "tells them apart almost always" in text and "recovers the hidden split" in text


def test_task_keeps_hidden_then_public_classes_in_order():
    from benchmarks.disguise import Task

    x = np.arange(10 * 4, dtype=np.uint8).reshape(10, 2, 2)
    y = np.arange(10)
    task = Task("fashion-mnist", x, y, x, y, 255)
    assert task.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress"]
    assert task.y_train.tolist() == [0, 1, 2, 3] and task.to_hidden == {2: 0, 3: 1}
    assert list(task.schema.image.class_names) == task.class_names
    assert task.model(task.x_train).max() <= 1.0


def test_leakage_left_is_none_where_the_reference_is_at_chance():
    at_chance = {
        "probe_auc": {"max": 0.5},
        "clustering": {"ari": 0.0},
        "few_shot": {"accuracy": 0.5, "label_naming_accuracy": 0.5},
    }
    leak = {
        "probe_auc": {"max": 0.75},
        "clustering": {"ari": 0.2},
        "few_shot": {"accuracy": 0.5, "label_naming_accuracy": 1.0},
    }
    assert set(m.leakage_left(leak, at_chance).values()) == {None}
    assert m.leakage_left(at_chance, leak) == {
        "probe AUC": 0.0,
        "cluster ARI": 0.0,
        "few-shot acc": None,
        "label naming": 0.0,
    }
