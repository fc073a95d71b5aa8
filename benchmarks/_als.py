"""benchmarks/.venv-baselines/bin/python benchmarks/_als.py IN.npz OUT.npz

implicit's ALS for ``benchmarks/baselines.py``, run in its own venv (implicit wants numpy 2, the
project's stack pins numpy 1.26). Reads the train matrix and the fold-in rows of the
validation and test users (CSR arrays), fits one model per grid point, folds the held-out users
in with ``recalculate_user`` and writes their full-catalogue scores; the caller evaluates.
"""
import sys
import time

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares

# factors, regularization, alpha: the caller picks the point best on validation NDCG@100
GRID = [(f, r, a) for f in (64, 128, 200) for r in (0.1, 1.0) for a in (5.0, 10.0, 20.0, 40.0)]


def csr(data, name, shape):
    return sp.csr_matrix((data[f"{name}_data"], data[f"{name}_indices"], data[f"{name}_indptr"]), shape=shape)


def main() -> int:
    data = np.load(sys.argv[1])
    n_items = int(data["n_items"])
    train = csr(data, "train", (len(data["train_indptr"]) - 1, n_items))
    out = {}
    for g, (factors, reg, alpha) in enumerate(GRID):
        model = AlternatingLeastSquares(factors=factors, regularization=reg, alpha=alpha, iterations=15,
                                        random_state=0)
        started = time.perf_counter()
        model.fit(train, show_progress=False)
        out[f"fit_s_{g}"] = time.perf_counter() - started
        for split in ("validation", "test"):
            rows = csr(data, split, (len(data[f"{split}_indptr"]) - 1, n_items))
            started = time.perf_counter()
            users = model.recalculate_user(np.arange(rows.shape[0]), rows)
            out[f"{split}_{g}"] = np.asarray(users @ model.item_factors.T, dtype=np.float32)
            out[f"{split}_s_{g}"] = time.perf_counter() - started
    out["grid"] = np.array(GRID)
    np.savez(sys.argv[2], **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
