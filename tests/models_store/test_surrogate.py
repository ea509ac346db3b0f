"""MAP's surrogates at serving time: the coefficients a preference gets solve the scalarisation
over the box, at least as well as a dense grid and as the best starting point."""
import numpy as np
import pytest

from models_store.surrogate import Surrogates, feature_count, quadratic_features, quadratic_jacobian


def planted(k: int, seed: int) -> np.ndarray:
    """Concave-ish surrogates: task t peaks towards c_t high, the others pull it down."""
    rng = np.random.default_rng(seed)
    w = rng.normal(scale=0.3, size=(k, feature_count(k)))
    i, j = np.triu_indices(k)
    for t in range(k):
        w[t, 1 + t] += 4.0  # c_t helps task t
        w[t, 1 + k + np.flatnonzero((i == j))] -= 1.5  # diminishing returns on every c
    return w


def grid(k: int, c_max: float, n: int = 41) -> np.ndarray:
    axis = np.linspace(0.0, c_max, n)
    return np.stack(np.meshgrid(*[axis] * k, indexing="ij"), -1).reshape(-1, k)


def test_the_jacobian_of_the_features_is_their_derivative():
    c = np.array([0.3, 0.7, 0.2])
    eps = 1e-6
    numeric = np.stack([(quadratic_features(c + eps * e)[0] - quadratic_features(c - eps * e)[0]) / (2 * eps)
                        for e in np.eye(3)], axis=1)
    assert np.allclose(quadratic_jacobian(c), numeric, atol=1e-6)


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
@pytest.mark.parametrize("scalarisation", ["weighted-sum", "tchebycheff"])
def test_a_preference_gets_the_best_coefficients_of_the_box(metric, scalarisation):
    k, c_max = 2, 1.0
    weights = planted(k, seed=1) * (1 if metric == "accuracy" else -0.3)
    surrogates = Surrogates(weights, metric, c_max)
    dense = grid(k, c_max)
    starts = np.array([[0.2, 0.2], [0.9, 0.1], [0.1, 0.9]])
    for pref in ([1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.8, 0.2], [0.3, 0.7]):
        pref = np.array(pref)
        c = surrogates.best_coefficients(pref, scalarisation, starts)
        assert c.shape == (k,) and np.all((0 <= c) & (c <= c_max))
        value = surrogates.objective(c[None], pref, scalarisation)[0]
        assert value <= surrogates.objective(dense, pref, scalarisation).min() + 1e-4
        assert value <= surrogates.objective(starts, pref, scalarisation).min() + 1e-12


def test_the_weighted_sum_at_a_vertex_is_that_tasks_best_and_the_ideal_point_is_each_tasks_best():
    k = 3
    surrogates = Surrogates(planted(k, seed=2), "accuracy", 1.0)
    dense = grid(k, 1.0, n=21)
    best = surrogates.predict(dense).max(axis=0)
    assert np.allclose(surrogates.ideal(), best, atol=1e-3) and np.all(surrogates.ideal() >= best - 1e-9)
    for t in range(k):
        c = surrogates.best_coefficients(np.eye(k)[t], "weighted-sum", np.zeros((1, k)))
        assert surrogates.predict(c[None])[0, t] == pytest.approx(surrogates.ideal()[t], abs=1e-6)
