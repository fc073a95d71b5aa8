"""python benchmarks/gramian.py [--sizes ml-1m,ml-20m] [--epochs 10,1] [--no-baseline] [--isa avx2]
    [--variants "Gramian MSE union,…"] [--split-steps 12] [--op-rows 12] [--ml1m-seeds 3] [--ml1m-epochs 50]
    [--data-cache data/bench/gramian]

The weighted MSE (``train.loss=mse``, confidence 3) in its Gramian form (``train.mse_form=gramian``,
``recoder_dist.losses.gramian_mse``) against the dense form over the B × |T| logits
(``mse_form=dense``), batch union and full catalogue, and the original Recoder 0.4.0 (MSE) beside
them, all in one run on the same data, fp32, all cores:

1. per size, every variant trained for the size's epochs from in-memory users (shuffled each epoch,
   batch-union sampling by ``recoder_dist.sampling.make_batches`` inside the epoch time, as the
   original's data loader is inside its own): s/epoch, ms/step, users/s (fastest epoch after the
   first when there are several), test Recall@20 and NDCG@100 after the last epoch, and the
   CPU stall share of that epoch (seconds some task on the machine waited for a CPU, per second,
   from ``/proc/pressure/cpu``: high means other work slowed it);
2. the split of one step (mean ms over ``--split-steps`` steps after warm-up): sampling (batch
   construction), forward, loss, backward, optimizer (zero_grad + fused Adam), the same calls as
   ``trainer.Step`` with a clock between them; and, for the Gramian variants, the ``--op-rows``
   operators with the most self CPU time per step under ``torch.profiler``.

Data: ``pipeline.synthetic.generate`` at MovieLens-1M's shape (6,040 users × 3,706 items, ~166 per
user) and MovieLens-20M's (138,493 × 26,744, ~144 per user), every interaction kept as 1.0, users
with ≥ 5; 10 % of the users held out (seeded), 80 % of each held-out user's items folded in, the
other 20 % to find. Settings as the original's ML-20M script: h = 200 tanh, input noise 0.5, Adam
lr 1e-3, weight decay 2e-5, batch 500, target set per 500 users.

3. quality on real MovieLens 1M (``pipeline.datasets.movielens_1m``, ``conf/ml-1m.yaml``'s rules:
   ratings > 3.5 kept as 1, users with ≥ 5; split here in memory as above, one split per seed):
   today's MSE (dense, union), Gramian union, Gramian full, test Recall@20/50 and NDCG@100 after
   ``--ml1m-epochs`` (no model selection), mean ± std over ``--ml1m-seeds`` seeds.

``--isa avx2`` re-runs this script (and the original) with the CPU kernels capped at AVX2
(``ATEN_CPU_CAPABILITY=avx2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``, ``ONEDNN_MAX_CPU_ISA=AVX2``,
``FBGEMM_ENABLE_INSTRUCTIONS=AVX2``): it emulates a CPU without AVX-512 (the same cores, clocks and
caches, narrower vectors). The kernel path in use is printed first, and the original's as its
process reports it (the caps reach it through its environment). The original needs its own venv
(``benchmarks/README.md``); without it, or with ``--no-baseline``, its rows are left out.

The generated users of each size are kept in ``--data-cache`` (ML-20M's shape takes minutes), so a
size can be measured in several commands (``--variants ''`` runs the original alone,
``--no-baseline`` ours alone).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}  # FBGEMM: the embedding-bag kernels
if "--isa" in sys.argv and sys.argv[sys.argv.index("--isa") + 1:][:1] == ["avx2"] \
        and any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ENV})  # before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import CORES, SIZES, one_process_step  # noqa: E402
from pipeline.config import SyntheticConfig  # noqa: E402
from pipeline.synthetic import generate  # noqa: E402
from recoder_dist.allocator import reuse_freed_memory  # noqa: E402
from recoder_dist.config import load_config  # noqa: E402
from recoder_dist.csr import column_order, entry_rows, offsets_of  # noqa: E402
from recoder_dist.metrics import ndcg_at_k, recall_at_k, top_k  # noqa: E402
from recoder_dist.sampling import UserRows, make_batches  # noqa: E402
from recoder_dist.trainer import Step  # noqa: E402

SETTINGS = ["train.loss=mse", "train.confidence=3", "train.batch_size=500", "train.num_sampling_users=500",
            "model.hidden_sizes=[200]", "model.input_dropout=0.5", "train.lr=0.001", "train.weight_decay=0.00002",
            "train.milestones=[1000]", "mlflow.enabled=false"]
VARIANTS = {"dense MSE union": ("dense", False), "Gramian MSE union": ("gramian", False),
            "dense MSE full": ("dense", True), "Gramian MSE full": ("gramian", True)}
ITEM_OPTIMIZER = ["adam"]  # train.item_optimizer of our variants (--item-optimizer)
RECODER_PYTHON = ROOT / "benchmarks" / ".venv-recoder" / "bin" / "python"


@dataclass
class Data:
    """Train users and held-out test users (fold-in, and the items to find) of one size."""

    train: UserRows
    foldin: UserRows
    heldout: UserRows
    num_items: int


def csr(users: np.ndarray, items: np.ndarray, n_users: int) -> UserRows:
    """UserRows of (user, item) pairs sorted by user, values 1.0."""
    return UserRows(np.arange(n_users), offsets_of(np.bincount(users, minlength=n_users)), items,
                    np.ones(len(items), np.float32))


def synthetic_data(config: SyntheticConfig, cache: Optional[Path] = None) -> Data:
    """The users of ``config``, generated once and kept in the folder ``cache`` (``--data-cache``;
    ML-20M's shape takes minutes to generate) when given."""
    key = hashlib.sha1(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:12]
    path = None if cache is None else cache / f"synthetic-{key}.npz"
    if path is not None and path.is_file():
        with np.load(path) as pairs:
            users, items = pairs["users"], pairs["items"]
    else:
        frame = generate(config)
        users, items = frame["user_id"].to_numpy() - 1, frame["item_id"].to_numpy() - 1
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial.npz")
            np.savez(partial, users=users, items=items)
            partial.replace(path)
    return split_users(users, items, config.num_items)


def movielens_1m_data(seed: int) -> Data:
    """Real MovieLens 1M as ``conf/ml-1m.yaml`` treats it (ratings > 3.5 kept as 1, users with
    ≥ 5 of them), split here in memory with ``seed``."""
    import pandas as pd

    from pipeline.datasets import movielens_1m
    frame = pd.read_csv(movielens_1m(), sep="\t")
    frame = frame[frame["rating:float"] > 3.5]
    users = pd.factorize(frame["user_id:token"])[0]
    items, titles = pd.factorize(frame["item_id:token"])
    return split_users(users.astype(np.int64), items.astype(np.int64), len(titles), seed)


def split_users(users: np.ndarray, items: np.ndarray, num_items: int, seed: int = 3) -> Data:
    """Users with ≥ 5 items; 10 % of them held out with ``seed``, 80 % of each one's items
    folded in."""
    counts = np.bincount(users)
    keep = counts[users] >= 5
    users, items = users[keep], items[keep]
    kept = np.flatnonzero(counts >= 5)
    users = np.searchsorted(kept, users)  # dense user ids
    rng = np.random.default_rng(seed)
    test_user = np.zeros(len(kept), bool)
    test_user[rng.choice(len(kept), len(kept) // 10, replace=False)] = True
    order = np.lexsort((rng.random(len(users)), users))  # by user, random order within a user
    users, items = users[order], items[order]
    train, test = ~test_user[users], test_user[users]
    train_ids = np.cumsum(~test_user) - 1
    test_ids = np.cumsum(test_user) - 1
    n_train, n_test = int((~test_user).sum()), int(test_user.sum())
    t_users, t_items = test_ids[users[test]], items[test]
    rank = np.arange(len(t_users)) - np.searchsorted(t_users, t_users)  # position within the user
    length = np.bincount(t_users, minlength=n_test)[t_users]
    into = rank < np.ceil(0.8 * length)
    return Data(csr(train_ids[users[train]], items[train], n_train), csr(t_users[into], t_items[into], n_test),
                csr(t_users[~into], t_items[~into], n_test), num_items)


def shuffled(rows: UserRows, rng: np.random.Generator) -> UserRows:
    return rows.take(rng.permutation(len(rows)))


def make_step(data: Data, form: str, full: bool) -> Step:
    config = load_config(None, [*SETTINGS, f"train.mse_form={form}", f"train.full={str(full).lower()}",
                                f"train.item_optimizer={ITEM_OPTIMIZER[0]}"])
    return one_process_step(config, data.num_items)


def batches(step: Step, rows: UserRows, rng: np.random.Generator):
    t = step.config.train
    return make_batches(rows, t.batch_size, t.num_sampling_users, step.model.num_items, 0, t.full, rng)


def quality(model: torch.nn.Module, data: Data) -> dict[str, float]:
    """Test Recall@20 and NDCG@100 of ``model`` (fold-in items excluded)."""
    model.eval()
    top = []
    with torch.no_grad():
        for start in range(0, len(data.foldin), 1000):
            part = data.foldin.slice(start, start + 1000)
            scores = model(torch.from_numpy(part.items), torch.from_numpy(part.values), torch.from_numpy(part.offsets))
            top.append(top_k(scores, entry_rows(part.offsets), part.items, 100).numpy())
    return ranked_quality(np.concatenate(top), data)


def ranked_quality(top: np.ndarray, data: Data) -> dict[str, float]:
    h = data.heldout
    return {"recall_at_20": float(np.nanmean(recall_at_k(top, h.offsets, h.items, 20))),
            "recall_at_50": float(np.nanmean(recall_at_k(top, h.offsets, h.items, 50))),
            "ndcg_at_100": float(np.nanmean(ndcg_at_k(top, h.offsets, h.items, 100)))}


def cpu_stall_s() -> float:
    """Seconds, machine-wide, that some runnable task waited for a CPU (``/proc/pressure/cpu``;
    NaN where absent): how much other work slowed a timing on a shared machine."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split("total=")[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return float("nan")


def train_ours(data: Data, form: str, full: bool, epochs: int) -> dict:
    step = make_step(data, form, full)
    rng = np.random.default_rng(1)
    times, stalls, steps = [], [], 0
    for _ in range(epochs):
        step.model.train()
        started, stall = time.perf_counter(), cpu_stall_s()
        steps = 0
        for batch in batches(step, shuffled(data.train, rng), rng):
            step(batch)
            steps += 1
        times.append(time.perf_counter() - started)
        stalls.append(cpu_stall_s() - stall)
    best = int(np.argmin(times[1:])) + 1 if len(times) > 1 else 0
    seconds = times[best]
    return {"epoch_s": seconds, "step_ms": 1e3 * seconds / steps, "users_per_s": len(data.train) / seconds,
            "stall_share": stalls[best] / seconds, **quality(step.model, data)}


def step_split(data: Data, form: str, full: bool, steps: int) -> dict[str, float]:
    """Mean ms per phase of ``trainer.Step``'s body (one process: no gradient exchange)."""
    step = make_step(data, form, full)
    model, optimizer = step.model, step.optimizer
    rng = np.random.default_rng(2)
    rows = shuffled(data.train, rng).slice(0, 500 * (steps + 3))
    model.train()
    totals = dict.fromkeys(("sampling", "forward", "loss", "backward", "optimizer"), 0.0)
    stream = (batch for _ in range(steps + 3) for batch in batches(step, rows, rng))  # wraps on small data
    for i in range(steps + 3):
        clock = [time.perf_counter()]
        batch = next(stream)
        clock.append(time.perf_counter())
        optimizer.zero_grad()
        by_item = column_order(batch.items, batch.rows, model.num_items)
        z = model.hidden_kl(batch.items, batch.values, batch.offsets, by_item)[0]
        weight, bias = model.target_rows(batch.target_items)
        if step.hidden_loss_fn is None:
            logits = torch.addmm(bias, z, weight.t())
            clock.append(time.perf_counter())
            loss = step.loss_fn(logits, batch.rows, batch.target_cols, batch.values)
        else:
            clock.append(time.perf_counter())
            loss = step.hidden_loss_fn(z, weight, bias, batch.rows, batch.target_cols, batch.values,
                                       offsets=batch.offsets, by_col=by_item)
        clock.append(time.perf_counter())
        loss.backward()
        clock.append(time.perf_counter())
        optimizer.step()
        clock.append(time.perf_counter())
        if i >= 3:  # after warm-up (allocator, threads)
            for name, a, b in zip(totals, clock, clock[1:]):
                totals[name] += 1e3 * (b - a) / steps
    return totals


def op_split(data: Data, form: str, full: bool, steps: int, top: int) -> list[tuple[str, float, float]]:
    """The ``top`` operators by self CPU time over ``steps`` whole ``trainer.Step`` calls (after 3
    of warm-up), under ``torch.profiler``: ``(op, ms per step, share of the step)``, and the
    step's own Python time as ``(step, outside ops)``."""
    from torch.profiler import ProfilerActivity, profile, record_function
    step = make_step(data, form, full)
    rng = np.random.default_rng(2)
    ready = list(batches(step, shuffled(data.train, rng).slice(0, 500 * (steps + 3)), rng))
    step.model.train()
    for batch in ready[:3]:
        step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            with record_function("(step, outside ops)"):
                step(ready[3 + i % (len(ready) - 3)] if len(ready) > 3 else ready[i % len(ready)])
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return [(e.key, e.self_cpu_time_total / 1e3 / steps, e.self_cpu_time_total / total) for e in ranked]


def train_original(data: Data, full: bool, epochs: int, work: Path) -> Optional[dict]:
    """The original Recoder in its venv (``benchmarks/_recoder.py``), MSE, same settings."""
    source, target = work / "in.npz", work / f"out-{int(full)}.npz"
    if not source.is_file():
        arrays = {"n_items": data.num_items}
        for name, rows in (("train", data.train), ("test", data.foldin), ("validation", data.foldin.slice(0, 0))):
            arrays.update({f"{name}_indptr": rows.offsets, f"{name}_indices": rows.items, f"{name}_data": rows.values})
        np.savez(source, **arrays)
    command = [str(RECODER_PYTHON), str(ROOT / "benchmarks" / "_recoder.py"), str(source), str(target),
               "--epochs", str(epochs), "--loss", "mse", "--confidence", "3", "--threads", str(CORES), "--splits", "test",
               *(["--full"] if full else [])]
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    done = subprocess.run(command, env={**env, "OMP_NUM_THREADS": str(CORES)}, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  original Recoder failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    out = np.load(target)
    kernel = json.loads(str(out["config"])).get("kernel", {})
    print(f"  original Recoder's process: kernel path {kernel}", flush=True)
    if kernel.get("aten") != torch.backends.cpu.get_cpu_capability():
        raise RuntimeError(f"the original ran on another kernel path ({kernel}) than this process")
    epoch_s = [float(x) for x in out["epoch_s"]]
    best = int(np.argmin(epoch_s[1:])) + 1 if len(epoch_s) > 1 else 0
    seconds = epoch_s[best]
    steps = -(-len(data.train) // 500)
    return {"epoch_s": seconds, "step_ms": 1e3 * seconds / steps, "users_per_s": len(data.train) / seconds,
            "stall_share": float(out["epoch_cpu_stall_s"][best]) / seconds, **ranked_quality(out["test_top"], data)}


QUALITY_VARIANTS = {"today's MSE (dense union)": ("dense", False), "Gramian MSE union": ("gramian", False),
                    "Gramian MSE full": ("gramian", True)}


def quality_section(seeds: int, epochs: int) -> dict:
    """Real MovieLens 1M, ``seeds`` user splits: test metrics after ``epochs`` (mean ± std)."""
    found = {label: [] for label in QUALITY_VARIANTS}
    for seed in range(seeds):
        data = movielens_1m_data(seed)
        if seed == 0:
            print(f"\n## real MovieLens 1M: {len(data.train):,} train users × {data.num_items:,} items, "
                  f"{data.train.offsets[-1]:,} train interactions, {len(data.foldin):,} test users; "
                  f"{epochs} epochs, {seeds} split seeds, metrics after the last epoch", flush=True)
        for label, (form, full) in QUALITY_VARIANTS.items():
            found[label].append(train_ours(data, form, full, epochs))
            print(f"  seed {seed} {label}: {found[label][-1]}", flush=True)
    metrics = ["recall_at_20", "recall_at_50", "ndcg_at_100", "users_per_s"]

    def cell(runs, m):
        values = np.array([r[m] for r in runs])
        return f"{values.mean():,.0f} ± {values.std(ddof=1):,.0f}" if m == "users_per_s" else \
            f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"
    print(table(["variant", "Recall@20", "Recall@50", "NDCG@100", "users/s"],
                [(label, *(cell(runs, m) for m in metrics)) for label, runs in found.items()]), flush=True)
    return found


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="ml-1m,ml-20m", help="of ml-1m, ml-20m, tiny (a seconds-long smoke run)")
    parser.add_argument("--epochs", default="10,1", help="epochs per size, in --sizes order")
    parser.add_argument("--no-baseline", action="store_true", help="leave the original Recoder out")
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--split-steps", type=int, default=12)
    parser.add_argument("--op-rows", type=int, default=12, help="operators listed per Gramian variant (0: none)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of our variants (empty: the original's rows only)")
    parser.add_argument("--data-cache", type=Path, default=ROOT / "data" / "bench" / "gramian",
                        help="folder keeping the generated users between runs ('': generate every run)")
    parser.add_argument("--ml1m-seeds", type=int, default=3, help="real ML-1M quality: split seeds (0: skip)")
    parser.add_argument("--ml1m-epochs", type=int, default=50)
    parser.add_argument("--item-optimizer", default="adam", help="train.item_optimizer of ours (adam, lazy_adam, …)")
    args = parser.parse_args(argv)
    ITEM_OPTIMIZER[0] = args.item_optimizer
    torch.set_num_threads(CORES)
    reuse_freed_memory()  # as trainer.fit does
    print(f"torch {torch.__version__}, kernel path {torch.backends.cpu.get_cpu_capability()}, {CORES} threads, "
          f"train.item_optimizer={args.item_optimizer}, "
          f"MKL_ENABLE_INSTRUCTIONS={os.environ.get('MKL_ENABLE_INSTRUCTIONS', '-')}, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '-')}, "
          f"FBGEMM_ENABLE_INSTRUCTIONS={os.environ.get('FBGEMM_ENABLE_INSTRUCTIONS', '-')}", flush=True)
    baseline = not args.no_baseline and RECODER_PYTHON.is_file()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    cache = args.data_cache if str(args.data_cache) not in {"", "."} else None
    results = {}
    for size, epochs in zip(args.sizes.split(","), map(int, args.epochs.split(","))):
        started = time.perf_counter()
        data = synthetic_data(SIZES[size], cache)
        print(f"\n## {size}: {len(data.train):,} train users × {data.num_items:,} items, "
              f"{data.train.offsets[-1]:,} train interactions, {len(data.foldin):,} test users; {epochs} epoch(s) "
              f"(data in {time.perf_counter() - started:.0f} s)", flush=True)
        runs = {}
        with tempfile.TemporaryDirectory(prefix="gramian-bench-") as work:
            for full in (False, True):
                label = f"original Recoder 0.4.0 MSE {'full' if full else 'union'}"
                if baseline and (full is False or size == "ml-1m"):  # its full mode at ML-20M: ~B × 27K dense
                    runs[label] = train_original(data, full, epochs, Path(work))
                    if runs[label]:
                        print(f"  {label}: {runs[label]}", flush=True)
        for label in variants:
            form, full = VARIANTS[label]
            runs[label] = train_ours(data, form, full, epochs)
            print(f"  {label}: {runs[label]}", flush=True)
        reference_label = "original Recoder 0.4.0 MSE union" if runs.get("original Recoder 0.4.0 MSE union") \
            else next((label for label, r in runs.items() if r), None)
        if reference_label is None:
            continue
        reference = runs[reference_label]
        rows = [(label, f"{r['epoch_s']:.2f}", f"{r['step_ms']:.1f}", f"{r['users_per_s']:,.0f}",
                 f"**{r['users_per_s'] / reference['users_per_s']:.2f}**", f"{r['recall_at_20']:.4f}",
                 f"{r['ndcg_at_100']:.4f}", f"{r['stall_share']:.0%}") for label, r in runs.items() if r]
        print(table(["variant", "s/epoch", "ms/step", "users/s", f"÷ {reference_label}",
                     "Recall@20", "NDCG@100", "CPU stall"], rows), flush=True)
        splits = {label: step_split(data, *VARIANTS[label], args.split_steps) for label in variants}
        if splits:
            phases = list(next(iter(splits.values())))
            print("\nsplit of a step, ms (mean of %d steps)" % args.split_steps)
            print(table(["variant", *phases, "total"],
                        [(label, *(f"{s[p]:.1f}" for p in phases), f"{sum(s.values()):.1f}")
                         for label, s in splits.items()]), flush=True)
        ops = {label: op_split(data, *VARIANTS[label], args.split_steps, args.op_rows)
               for label in variants if args.op_rows and VARIANTS[label][0] == "gramian"}
        for label, ranked in ops.items():
            print(f"\n{label}: top operators by self CPU time (ms/step, share; torch.profiler, {args.split_steps} steps)")
            print(table(["operator", "ms/step", "share"], [(k, f"{ms:.2f}", f"{share:.0%}") for k, ms, share in ranked]),
                  flush=True)
        results[size] = {"runs": runs, "split": splits, "ops": ops}
    if args.ml1m_seeds:
        results["real ml-1m"] = quality_section(args.ml1m_seeds, args.ml1m_epochs)
    print("\n" + json.dumps({"kernel": torch.backends.cpu.get_cpu_capability(), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
