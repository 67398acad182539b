"""Drop-in for scikit-learn: results identical to the loky backend."""

import numpy as np
import pytest
from joblib import parallel_config
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score


@pytest.fixture(scope="module")
def data():
    return make_classification(n_samples=400, n_features=10, random_state=0)


def fit_all(backend, X, y, **config):
    with parallel_config(backend, n_jobs=2, **config):
        grid = GridSearchCV(
            LogisticRegression(max_iter=200), {"C": [0.1, 1.0, 10.0]}, cv=3, n_jobs=-1
        ).fit(X, y)
        scores = cross_val_score(
            HistGradientBoostingClassifier(max_iter=10, random_state=0), X, y, cv=3
        )
        forest = RandomForestClassifier(n_estimators=10, random_state=0, n_jobs=2)
        proba = forest.fit(X, y).predict_proba(X)
    return grid.cv_results_["mean_test_score"], grid.best_params_, scores, proba


@pytest.mark.parametrize(
    "config", [{}, {"prefer": "threads"}], ids=["processes", "threads"]
)
def test_results_identical_to_loky(data, config):
    X, y = data
    expected = fit_all("loky", X, y)
    got = fit_all("budgeted", X, y, **config)
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1] == expected[1]
    np.testing.assert_array_equal(got[2], expected[2])
    np.testing.assert_array_equal(got[3], expected[3])
