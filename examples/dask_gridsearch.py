"""A scikit-learn grid search on a Dask cluster, each task within its budget.

Run it as ``python examples/dask_gridsearch.py``. It starts a ``LocalCluster``
on this machine; to use an existing cluster instead, replace the cluster with
``Client("tcp://scheduler-host:8786")``: the rest is unchanged.
"""

from __future__ import annotations

from dask.distributed import Client, LocalCluster
from joblib import Parallel, delayed, parallel_config
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV
from sklearn.tree import DecisionTreeClassifier

import budgeted  # registers the joblib backends "budgeted" and "budgeted-dask"

X, y = make_classification(n_samples=500, n_features=10, random_state=0)
GRID = {"max_depth": [2, 4, 8, None], "min_samples_leaf": [1, 5, 20]}


def grid_search() -> GridSearchCV:
    search = GridSearchCV(DecisionTreeClassifier(random_state=0), GRID, n_jobs=-1)
    return search.fit(X, y)


def main() -> None:
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    with cluster, client, parallel_config("budgeted-dask", client=client):
        search = grid_search()
        # What each task got: its share of its host's CPUs.
        budgets = Parallel()(delayed(budgeted.current_budget)() for _ in range(8))
    print("best parameters:", search.best_params_)
    print(f"best score: {search.best_score_:.3f}")
    print("budget seen by tasks:", set(budgets))


if __name__ == "__main__":
    main()
