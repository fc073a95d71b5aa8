"""python benchmarks/quality.py [--datasets ml-100k,ml-1m] [--seeds 3] [--baselines] [--setting "NAME=K=V;K=V" ...]
    [--models autoencoders,popularity,als,recoder] [--run-seeds 0,1] [--results FILE.json]

The quality a user gets without tuning (issue 15): on real MovieLens 100K and 1M, each prepared
with its shipped config (``conf/ml-100k.yaml``, ``conf/ml-1m.yaml``) under ``--seeds`` split seeds
(``prepare.seed`` = the config's, +1, +2), every model is measured on the same splits: the
autoencoder as shipped, the shipped config with the original's constant-rate step schedule, any
``--setting`` given, EASE (λ chosen on validation), implicit ALS (grid on validation; with
``--baselines`` and ``benchmarks/.venv-baselines``), popularity and, on ML-1M, the original
Recoder 0.4.0 (MSE, confidence 3 as its README's best; with ``--baselines`` and
``benchmarks/.venv-recoder``). It prints mean ± std over the seeds of the test metrics, and the
training seconds each autoencoder setting needed to first reach EASE's validation NDCG@100 on
the same split. The EASE, ALS, popularity and Recoder helpers are ``benchmarks/baselines.py``'s,
the training runs ``benchmarks/common.py``'s. ``--results`` keeps each split's results in a JSON
file and reports over everything it holds, so that the models (``--models``) and seeds
(``--run-seeds``) of one benchmark can run as separate commands (each under the shared machine's
10-minute cap).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baselines import (RECODER_SETUP, Measured, als_baseline, baseline_input,  # noqa: E402
                                  ease_on_validation, evaluate, item_counts, ranked_scorer, run_baseline,
                                  seconds_to_reach)
from benchmarks.common import CORES, ROOT, Datasets, manifest, table, train  # noqa: E402

from recoder_dist.config import load_config  # noqa: E402
from recoder_dist.metrics import METRICS  # noqa: E402

CONFIGS = {"ml-100k": ROOT / "conf" / "ml-100k.yaml", "ml-1m": ROOT / "conf" / "ml-1m.yaml"}
LAMBDAS = (100.0, 300.0, 1000.0, 3000.0)
RUN = ["mlflow.enabled=false", "train.eval_every=1"]
# the original's schedule (Recoder's examples: Adam 1e-3, MultiStepLR without milestones in reach)
STEP = ["train.lr_schedule=step", "train.lr=0.001", "train.milestones=[1000]", "train.patience=0"]


def source(name: str) -> Path:
    from pipeline.datasets import movielens_1m, movielens_100k
    return {"ml-100k": movielens_100k, "ml-1m": movielens_1m}[name]()


def ease(data: Path) -> tuple[Measured, float]:
    """EASE with λ best on validation: its test metrics and that validation NDCG@100."""
    val, lam, scorer, fit_s = ease_on_validation(data, LAMBDAS)
    return Measured(evaluate(scorer, data), fit_s, f"λ={lam:g}", validation_ndcg=val, fit_s=fit_s), val


def original_recoder(data: Path, work: Path, epochs: int) -> Measured:
    """Recoder 0.4.0 with MSE (its README's best on ML-1M-like data) in its own venv."""
    config = load_config(CONFIGS["ml-1m"]).train
    target = work / f"recoder-{data.name}-out.npz"
    error = run_baseline(".venv-recoder", "_recoder.py",
                         [baseline_input(data, work / f"baseline-{data.name}-in.npz"), target, "--epochs", epochs,
                          "--loss", "mse", "--confidence", 3, "--batch-size", config.batch_size, "--num-sampling-users",
                          config.num_sampling_users, "--threads", CORES, "--splits", "test"], CORES)
    if error:
        return Measured(None, 0.0, error)
    import numpy as np
    out = np.load(target)
    return Measured(evaluate(ranked_scorer(out["test_top"], manifest(data)["num_items"]), data), float(out["fit_s"]),
                    f"MSE, {epochs} epochs", fit_s=float(out["fit_s"]))


MODELS = ("ease", "autoencoders", "popularity", "als", "recoder")  # what --models picks from


def one_split(name: str, data: Path, work: Path, settings: dict[str, list[str]], baselines: bool,
              original_epochs: int, models: Sequence[str] = MODELS,
              val_ease: Optional[float] = None) -> dict[str, dict]:
    """The ``models`` on one prepared split: ``{model: {"test", "fit_s", "reach", "note"}}`` (``reach``:
    the autoencoders' time to EASE's validation NDCG@100, when EASE is among them or ``val_ease``,
    its figure kept from an earlier command on this split, is given)."""
    from recoder_dist.evaluation import popularity_scorer
    out = {}
    if "ease" in models:
        measured, val_ease = ease(data)
        out["EASE"] = {"test": measured.test, "fit_s": measured.fit_s, "note": measured.note, "val": val_ease}
    for label, overrides in (settings.items() if "autoencoders" in models else ()):
        config = CONFIGS[name]
        if overrides and overrides[0].startswith("@"):  # another config's model and train sections
            config, overrides = ROOT / overrides[0][1:], overrides[1:]
        r = train("".join(c if c.isalnum() or c in "-." else "_" for c in f"{data.name}-{label}"), data,
                  1, CORES, [*RUN, *overrides], work, config=str(config), ceiling=False)
        out[label] = {"test": r["test"], "fit_s": sum(h["epoch_s"] for h in r["history"]),
                      "val": r["best_validation"]["ndcg_at_100"],
                      "note": f"{len(r['history'])} epochs, best {r['best_epoch']}"}
        if val_ease is not None:
            out[label]["reach"] = seconds_to_reach(r["history"], val_ease)
    if "popularity" in models:
        out["popularity"] = {"test": evaluate(popularity_scorer(item_counts(data)), data), "fit_s": 0.0, "note": ""}
    if "als" in models:
        als = als_baseline(data, work, baselines)
        out["implicit ALS"] = {"test": als.test, "fit_s": als.fit_s, "note": als.note}
    if name == "ml-1m" and "recoder" in models:
        if baselines and (ROOT / "benchmarks" / ".venv-recoder" / "bin" / "python").is_file():
            original = original_recoder(data, work, original_epochs)
            out["Recoder 0.4.0 (original)"] = {"test": original.test, "fit_s": original.fit_s, "note": original.note}
        else:
            out["Recoder 0.4.0 (original)"] = {"test": None, "fit_s": None,
                                               "note": f"not measured (--baselines after: {RECODER_SETUP})"}
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def kept(path: Optional[Path]) -> dict:
    """The results kept in the JSON file ``path`` (``{dataset: {seed: {model: ...}}}``); empty if none."""
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def kept_ease(path: Optional[Path], name: str, seed: int) -> Optional[float]:
    """EASE's validation NDCG@100 on (``name``, ``seed``) kept in the JSON file ``path``, if any."""
    return kept(path).get(name, {}).get(str(seed), {}).get("EASE", {}).get("val")


def merged(path: Optional[Path], name: str, seed: int, split: dict[str, dict]) -> dict[str, dict]:
    """``split``'s models over those kept for (``name``, ``seed``) in the JSON file ``path``
    (rewritten with them), so that the models and seeds of a benchmark can run as separate
    commands; only ``split`` without a file."""
    if path is None:
        return split
    results = kept(path)
    entry = results.setdefault(name, {}).setdefault(str(seed), {})
    entry.update(split)
    path.write_text(json.dumps(results, indent=1))
    return dict(entry)


def section(name: str, splits: list[dict[str, dict]], seeds: list[int], data: list[Path]) -> list[str]:
    m = manifest(data[0])
    lines = [f"### {name}: {m['num_users']['train']} train, {m['num_users']['validation']} validation, "
             f"{m['num_users']['test']} test users × {m['num_items']} items ({CONFIGS[name].relative_to(ROOT)}; "
             f"split seeds {', '.join(map(str, seeds))}; 1 process × {CORES} threads)", ""]
    rows, summary = [], {}
    for model in dict.fromkeys(m for s in splits for m in s):
        results = [s[model] for s in splits if model in s]
        partial = [f"{len(results)} of {len(splits)} splits"] if len(results) < len(splits) else []
        if any(r["test"] is None for r in results):
            rows.append([model, "–", "–", "–", "–", "–", "–", results[0]["note"]])
            continue
        cells = []
        for k in METRICS:
            mean, std = mean_std([r["test"][k] for r in results])
            summary[(model, k)] = (mean, std)
            cells.append(f"{mean:.4f} ± {std:.4f}")
        fit = [r["fit_s"] for r in results if r["fit_s"] is not None]
        reach = "–"
        if all("reach" in r for r in results):
            reached = [r["reach"][1] for r in results if r["reach"] is not None]
            reach = (f"{statistics.mean(reached):.1f} ({len(reached)}/{len(results)} reached)" if reached
                     else f"never (0/{len(results)})")
        val = (f"{statistics.mean(r['val'] for r in results):.4f}" if "val" in results[0] else "–")
        rows.append([model, *cells, val, f"{statistics.mean(fit):.1f}" if fit else "–", reach,
                     "; ".join(dict.fromkeys([*partial, *(r["note"] for r in results)]))])
    lines += [table(["model", "Recall@20", "Recall@50", "NDCG@100", "val NDCG@100 (mean)", "training s", "s to EASE's val NDCG@100", "note"],
                    rows), "",
              "Training s: the autoencoders' epochs (validation excluded), EASE's Gram + inverse, ALS's fit. "
              "Mean ± sample std over the splits."]
    shipped = "shipped"
    for other in ("EASE", "Recoder 0.4.0 (original)"):
        if (other, METRICS[0]) not in summary or (shipped, METRICS[0]) not in summary:
            continue
        verdict = []
        for k in METRICS:
            (a, sa), (b, sb) = summary[(shipped, k)], summary[(other, k)]
            verdict.append(f"{k} {a - b:+.4f} ({'>' if a - b > max(sa, sb) else 'not >'} one std {max(sa, sb):.4f})")
        lines.append(f"{shipped} − {other}: " + ", ".join(verdict) + ".")
    return lines


def parse_setting(text: str) -> tuple[str, list[str]]:
    """``NAME=section.key=v;...``: the dataset's config plus these overrides; ``NAME=@conf/x.yaml;...``:
    that config's model and train sections (and overrides) on the dataset's prepared splits."""
    label, _, overrides = text.partition("=")
    return label, [o for o in overrides.split(";") if o]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/quality.py", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="ml-100k,ml-1m")
    parser.add_argument("--seeds", type=int, default=3, help="split seeds (prepare.seed, +1, +2 ...)")
    parser.add_argument("--baselines", action="store_true", help="implicit ALS / Recoder 0.4.0 (own venvs)")
    parser.add_argument("--original-epochs", type=int, default=100, help="epochs of the original Recoder")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=section.key=v;section.key=v",
                        help="another autoencoder setting: the shipped config plus these overrides, or "
                             "NAME=@conf/other.yaml;section.key=v to train another config on the same splits")
    parser.add_argument("--no-step", action="store_true", help="skip the step-schedule comparison")
    parser.add_argument("--no-shipped", action="store_true",
                        help="skip the shipped config (already in --results from an earlier command)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--run-seeds", default="",
                        help="comma-separated indices (0-based) of the split seeds to run now; default all; "
                             "none: only report what --results holds")
    parser.add_argument("--results", type=Path, default=None,
                        help="JSON file each split's results are merged into; the report covers every split "
                             "and model it holds, so long benchmarks can run as several commands")
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "bench"))
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    run_now = (set() if args.run_seeds == "none"
               else {int(i) for i in args.run_seeds.split(",") if i} or set(range(args.seeds)))
    settings = {} if args.no_shipped else {"shipped": []}
    if not args.no_step:
        settings["shipped, step schedule (lr 1e-3 constant)"] = STEP
    settings.update(parse_setting(s) for s in args.setting)

    started = time.perf_counter()
    load = os.getloadavg()[0]
    datasets = Datasets(Path(args.data_dir), fresh=False)
    prepared: dict[str, list[Path]] = {}
    seeds: dict[str, list[int]] = {}
    for name in args.datasets.split(","):
        prepare = load_config(CONFIGS[name]).prepare
        seeds[name] = [prepare.seed + i for i in range(args.seeds)]
        prepared[name] = [datasets.source(f"{name}-seed{s}", source(name), "recbole", replace(prepare, seed=s))
                          for s in seeds[name]]
    datasets.close()

    work = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    report = [f"## quality benchmark ({time.strftime('%Y-%m-%d')}, {CORES} cores)", ""]
    try:
        for name, folders in prepared.items():
            splits = []
            for index, (seed, data) in enumerate(zip(seeds[name], folders)):
                if index in run_now:
                    print(f"{name}, split seed {seed}:", flush=True)
                    split = one_split(name, data, work, settings, args.baselines, args.original_epochs, models,
                                      kept_ease(args.results, name, seed))
                else:
                    split = {}
                splits.append(merged(args.results, name, seed, split))
            report += section(name, splits, seeds[name], folders) + [""]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report += [f"Settings: " + "; ".join(f"{k}: {' '.join(v) or 'as shipped'}" for k, v in settings.items()),
               f"Total {time.perf_counter() - started:.0f} s; 1-minute load average {load:.1f} at the start, "
               f"{os.getloadavg()[0]:.1f} at the end (other work on the machine skews timings)."]
    print("\n" + "\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
