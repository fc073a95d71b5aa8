"""benchmarks/.venv-recoder/bin/python benchmarks/_recoder.py IN.npz OUT.npz [--epochs N]
    [--loss multinomial|logistic|mse] [--confidence C] [--batch-size 500] [--num-sampling-users 500] [--hidden 200]
    [--threads T] [--full] [--dense-grad] [--milestones 60,80] [--seed 0] [--data-workers 0]
    [--splits validation,test] [--top-k 100]

The original Recoder (PyPI ``recsys-recoder==0.4.0``, Moussawi 2018) as a baseline for
``benchmarks/baselines.py``, run in its own venv (it pins torch 1.8 / numpy 1.19 / scipy 1.6; here it is
installed with ``--no-deps`` next to torch 2.13 CPU, numpy 1.26.4 and a current scipy). Set-up::

    python3.11 -m venv benchmarks/.venv-recoder
    benchmarks/.venv-recoder/bin/pip install torch==2.13.0          # alone, never resolved with others
    benchmarks/.venv-recoder/bin/pip install numpy==1.26.4 scipy annoy glog tqdm
    benchmarks/.venv-recoder/bin/pip install --no-deps recsys-recoder==0.4.0

(resolved here, 2026-11-30: torch 2.13.0+cpu, numpy 1.26.4, scipy 1.17.1, annoy 1.17.3 built from
its sdist, glog 0.3.1 with python-gflags 3.1.2 and six 1.17.0, tqdm 4.70.1.)

IN.npz (as ``_als.py`` reads it): ``n_items`` and CSR arrays ``{train,validation,test}_{indptr,
indices,data}``; the validation/test rows are the held-out users' fold-in items. OUT.npz:
``validation_top`` and ``test_top`` (those of ``--splits``; int32, the ``--top-k`` best items of each
fold-in user, its fold-in items excluded, best first, input order; the caller evaluates), ``epoch_s`` (seconds per training epoch),
``users_per_s`` (train users / epoch seconds), ``epoch_cpu_s`` (this process's CPU seconds per
epoch), ``epoch_cpu_stall_s`` (seconds per epoch during which some task on the machine waited for
a CPU, from ``/proc/pressure/cpu``, NaN where absent: a high share flags an epoch slowed by other
work on a shared machine), ``fit_s`` (the whole ``Recoder.train`` call),
``score_s`` (ranking the splits), ``threads``, ``train_users`` and ``config`` (JSON; its ``kernel`` is the kernel path torch chose and the ISA caps set in the environment).

Training is the original's own loop (``Recoder.train``) with the original hyper-parameters:
``DynamicAutoencoder(hidden_layers=[200], activation_type='tanh', noise_prob=0.5)``, Adam lr 1e-3,
weight decay 2e-5 (biases 0, as Recoder sets it), batch 500, mini-batch based negative sampling
over groups of ``num_sampling_users`` = 500 users (Recoder's ``negative_sampling=True``: the
decoder scores the union of the group's items; ``--full`` turns it off and scores the whole
catalogue), no learning-rate milestones unless ``--milestones`` is given (the original ML-20M
script used [60, 80] over 100 epochs), no evaluation during training. ``--loss multinomial`` is
Recoder's ``'logloss'`` (``MultinomialNLLLoss``), ``logistic`` its ``BCEWithLogitsLoss``, ``mse``
its ``MSELoss`` (``--confidence`` C: Recoder's ``loss_params={'confidence': C}``, weight
``1 + C·[x > 0]`` on the positives, as ``train.confidence``). Embeddings get sparse gradients
(``sparse=True`` → ``torch.optim.SparseAdam``), as in Recoder's tutorial, whenever negative sampling is on; ``--dense-grad`` (and ``--full``,
where Recoder's sparse path cannot work: with no item subset the embedding weight is used
directly and its gradient is dense, which SparseAdam rejects) puts them in the dense Adam. Note
the original's behaviour with sparse gradients: SparseAdam has no weight decay, so weight decay
then reaches no parameter (with hidden [200] the only dense parameters are the two biases, which
Recoder excludes from decay), and ``lr_milestones`` only act on the dense optimizer.

Per-epoch timing: a single ``Recoder.train(num_epochs=N)`` call (so no optimizer is rebuilt
between epochs). Recoder's ``_train`` loop calls ``self.model.train()`` once at the start of
every epoch, so the driver wraps that bound method on the model instance to take a timestamp;
epoch i lasts from its ``model.train()`` to the next one (the last to the return of
``Recoder.train``). That covers everything the original does per epoch (its in-process data
loader building sparse batches, forward/backward/step, tqdm), and nothing of set-up or scoring.
(A loop of ``train(num_epochs=1)`` calls would keep the Adam state, since ``__init_optimizer``
reloads the previous optimizer's ``state_dict``, but Recoder's ``current_epoch`` is left at the
last epoch run, so each call must be given ``num_epochs=current_epoch + 1`` and
``current_epoch`` advanced by hand; the hook avoids that.)

Scoring: ``Recoder.predict`` (eval mode, so no input noise; full-catalogue output, i.e. the
decoder's logits) over chunks of ``--batch-size`` fold-in users under ``torch.no_grad()``.
``predict`` always returns a tuple (``return output, input_dense if return_input else output``
parses as ``(output, ...)``), so the driver takes element 0.

Shims, applied in this process only (nothing in site-packages is patched):

1. ``scipy.sparse.sputils``: recoder.data does ``import scipy.sparse.sputils as sputils`` and calls
   ``sputils.issequence`` / ``sputils.isintlike``; scipy >= 1.8 moved them to
   ``scipy.sparse._sputils``, and scipy 1.17's deprecated ``scipy.sparse.sputils`` exports
   nothing (``AttributeError: `scipy.sparse.sputils` has no attribute `issequence```, raised at
   the first dataset index, i.e. the first training batch). A module object
   ``scipy.sparse.sputils`` holding those two functions from ``scipy.sparse._sputils`` is put in
   ``sys.modules`` (and as an attribute of ``scipy.sparse``) before recoder is imported.

Nothing else needed a shim with torch 2.13 (checked by running every path the driver uses:
negative sampling with sparse and dense gradients, full mode, each loss, milestones, a data
worker process, predict; the scores equal a hand-written forward pass to 3e-8).
What still only warns: ``torch.sparse.FloatTensor(...)`` (deprecated, still works), the
``lr_scheduler.step()``-before-``optimizer.step()`` order and ``get_lr()`` call (same
schedule as under torch 1.8: the scheduler steps at the start of each epoch, so milestone m
lowers the rate from epoch m on), ``torch.LongTensor([ndarray, ndarray])`` in ``BatchCollator``
("extremely slow": ~16 ms per 500-user ML-1M-sized batch here, same slow path as in torch 1.8,
left as the original has it), and ``reduction is 'sum'`` string identity tests in
recoder.losses (SyntaxWarning; true in CPython for these interned literals).
"""
import argparse
import json
import os
import sys
import time
import types


def _shim_scipy_sputils() -> None:
    import scipy.sparse
    import scipy.sparse._sputils as _sputils
    if "scipy.sparse.sputils" in sys.modules and hasattr(sys.modules["scipy.sparse.sputils"], "isintlike"):
        return
    try:  # an old scipy that still ships it
        import scipy.sparse.sputils  # noqa: F401
        if hasattr(scipy.sparse.sputils, "isintlike") and hasattr(scipy.sparse.sputils, "issequence"):
            return
    except ImportError:
        pass
    module = types.ModuleType("scipy.sparse.sputils")
    module.issequence = _sputils.issequence
    module.isintlike = _sputils.isintlike
    sys.modules["scipy.sparse.sputils"] = module
    scipy.sparse.sputils = module


_shim_scipy_sputils()

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402
from recoder import __version__ as RECODER_VERSION  # noqa: E402
from recoder.data import RecommendationDataset  # noqa: E402
from recoder.model import Recoder  # noqa: E402
from recoder.nn import DynamicAutoencoder  # noqa: E402

LOSSES = {"multinomial": "logloss", "logistic": "logistic", "mse": "mse"}
KERNEL_CAPS = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS")  # reported in config


def csr(data, name: str, n_items: int) -> sp.csr_matrix:
    indptr = data[f"{name}_indptr"]
    return sp.csr_matrix((data[f"{name}_data"].astype(np.float32), data[f"{name}_indices"], indptr),
                         shape=(len(indptr) - 1, n_items))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="IN.npz")
    parser.add_argument("target", help="OUT.npz")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--loss", choices=sorted(LOSSES), default="multinomial")
    parser.add_argument("--confidence", type=float, default=0.0, help="mse only: extra weight of the positives")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--num-sampling-users", type=int, default=500,
                        help="users per negative-sampling group (a multiple of --batch-size)")
    parser.add_argument("--hidden", type=int, default=200, help="bottleneck size (one hidden layer)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    parser.add_argument("--full", action="store_true",
                        help="no negative sampling: reconstruct the whole catalogue (dense gradients)")
    parser.add_argument("--dense-grad", action="store_true",
                        help="dense embedding gradients (plain Adam with weight decay) under negative sampling")
    parser.add_argument("--milestones", default="",
                        help="comma-separated epochs where the dense optimizer's lr drops 10x (default none)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=2e-5)
    parser.add_argument("--noise", type=float, default=0.5, help="input dropout probability")
    parser.add_argument("--data-workers", type=int, default=0, help="Recoder's num_data_workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=100, help="items ranked per held-out user")
    parser.add_argument("--splits", default="validation,test",
                        help="comma-separated held-out splits to score after training ('' for none)")
    return parser.parse_args(argv)


def cpu_stall_s() -> float:
    """Seconds, machine-wide, that some runnable task waited for a CPU (``/proc/pressure/cpu``)."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split("total=")[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return float("nan")


def top_items(recoder: Recoder, rows: sp.csr_matrix, batch_size: int, k: int) -> np.ndarray:
    """The ``k`` best-scored items (int32, best first) of each fold-in row, its own fold-in items
    excluded, in order, through ``Recoder.predict`` (full-catalogue scores stay in this process:
    at ML-20M size they would be gigabytes)."""
    dataset = RecommendationDataset(rows)
    out = np.empty((rows.shape[0], k), dtype=np.int32)
    with torch.no_grad():
        for start in range(0, rows.shape[0], batch_size):
            index = list(range(start, min(start + batch_size, rows.shape[0])))
            users_interactions, _ = dataset[index]
            prediction = recoder.predict(users_interactions)
            if isinstance(prediction, tuple):  # 0.4.0 returns (output, output) without return_input
                prediction = prediction[0]
            scores = prediction.float().cpu()
            foldin = rows[start:start + len(index)].tocoo()
            scores[torch.from_numpy(foldin.row).long(), torch.from_numpy(foldin.col).long()] = -float("inf")
            out[start:start + len(index)] = torch.topk(scores, k, dim=1).indices.numpy()
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    data = np.load(args.source)
    n_items = int(data["n_items"])
    train = csr(data, "train", n_items)
    negative_sampling = not args.full
    sparse_grad = negative_sampling and not args.dense_grad
    milestones = [int(m) for m in args.milestones.split(",") if m.strip()] or None

    model = DynamicAutoencoder(hidden_layers=[args.hidden], activation_type="tanh",
                               noise_prob=args.noise, sparse=sparse_grad)
    recoder = Recoder(model=model, num_items=n_items, num_users=train.shape[0], optimizer_type="adam",
                      loss=LOSSES[args.loss], use_cuda=False,
                      loss_params={"confidence": args.confidence} if args.loss == "mse" else None)

    # one timestamp per epoch: Recoder._train calls self.model.train() at the start of each epoch
    marks: list = []
    original_train = model.train

    def timed_train(mode: bool = True):
        if mode:
            marks.append((time.perf_counter(), time.process_time(), cpu_stall_s()))
        return original_train(mode)

    model.train = timed_train
    started = time.perf_counter()
    recoder.train(train_dataset=RecommendationDataset(train), lr=args.lr, weight_decay=args.weight_decay,
                  num_epochs=args.epochs, batch_size=args.batch_size, lr_milestones=milestones,
                  negative_sampling=negative_sampling, num_sampling_users=args.num_sampling_users,
                  num_data_workers=args.data_workers)
    ended = (time.perf_counter(), time.process_time(), cpu_stall_s())
    del model.train  # back to nn.Module.train
    fit_s = ended[0] - started
    if len(marks) != args.epochs:
        raise RuntimeError(f"expected {args.epochs} epoch marks, got {len(marks)}")
    epoch_s, epoch_cpu_s, epoch_stall_s = np.diff(np.array(marks + [ended]), axis=0).T

    out = {}
    started = time.perf_counter()
    for split in filter(None, args.splits.split(",")):
        out[f"{split}_top"] = top_items(recoder, csr(data, split, n_items), args.batch_size, args.top_k)
    score_s = time.perf_counter() - started

    config = {"recoder": RECODER_VERSION, "torch": torch.__version__, "loss": args.loss,
              "recoder_loss": LOSSES[args.loss], "confidence": args.confidence, "hidden_layers": [args.hidden], "activation": "tanh",
              "noise_prob": args.noise, "optimizer": "adam", "lr": args.lr, "weight_decay": args.weight_decay,
              "batch_size": args.batch_size, "num_sampling_users": args.num_sampling_users,
              "negative_sampling": negative_sampling, "sparse_gradients": sparse_grad,
              "lr_milestones": milestones, "epochs": args.epochs, "num_data_workers": args.data_workers,
              "seed": args.seed, "kernel": {"aten": torch.backends.cpu.get_cpu_capability(),
                                            **{k: os.environ.get(k, "-") for k in KERNEL_CAPS}}}
    np.savez(args.target, epoch_s=epoch_s, users_per_s=train.shape[0] / epoch_s, epoch_cpu_s=epoch_cpu_s,
             epoch_cpu_stall_s=epoch_stall_s, fit_s=fit_s, score_s=score_s,
             threads=args.threads, train_users=train.shape[0], config=json.dumps(config), **out)
    print(json.dumps({"epochs": args.epochs, "fit_s": round(fit_s, 3),
                      "epoch_s": [round(float(s), 4) for s in epoch_s],
                      "epoch_cpu_stall_s": [round(float(s), 3) for s in epoch_stall_s],
                      "users_per_s_median": round(float(np.median(train.shape[0] / epoch_s)), 1),
                      "score_s": round(score_s, 3), "threads": args.threads, **config}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
