"""python -m recoder_dist.registry {list,promote,demote,lineage,relog} — the MLflow Model Registry side.

Every finished training run registers a new version (versions are never overwritten) with the
alias ``candidate``, tagged with the dataset it was trained on (``pipeline.manifest.dataset_id``).
It becomes ``champion`` when there is none, or when the champion was trained on the same dataset
and the version's validation NDCG@100 beats the champion's. Scores of other datasets are not
comparable: a version of another dataset never displaces the champion (``promote`` does, by hand).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from recoder_dist.config import ConfigError, load_config
from recoder_dist.metrics import SELECTION_METRIC
from recoder_dist.mlflow_uri import mask_values, resolve_tracking_uri

log = logging.getLogger("recoder.registry")

CANDIDATE, CHAMPION = "candidate", "champion"
SCORE_TAG = f"val_{SELECTION_METRIC}"  # the tag every version is ranked by
DATASET_TAG = "dataset"


def register(client: MlflowClient, name: str, model_uri: str, run_id: str, val_ndcg: float, dataset: str,
             model_id: Optional[str] = None) -> dict:
    """Create a version of ``name`` from ``model_uri`` trained on ``dataset``, alias it, and
    promote it if it beats a champion of the same dataset (or there is none); the result's
    ``decision`` says which happened and why (it is logged too).

    ``model_id`` names the logged model behind a ``models:/m-…`` URI: a tracking server refuses
    that source without it (a local store does not check)."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Recoder autoencoder (recoder-dist)")
    version = client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id,
                                          tags={SCORE_TAG: f"{val_ndcg:.6f}", DATASET_TAG: dataset})
    client.set_registered_model_alias(name, CANDIDATE, version.version)
    champion = _alias_version(client, name, CHAMPION)
    champion_score = float(champion.tags.get(SCORE_TAG, "-inf")) if champion else None
    champion_dataset = champion.tags.get(DATASET_TAG) if champion else None
    label = f"{name} version {version.version}"
    if champion is None:
        promoted, decision = True, f"{label} is the first champion"
    elif champion_dataset != dataset:
        promoted = False
        decision = (f"{label} was trained on dataset {dataset}, the champion (version {champion.version}) on "
                    f"{champion_dataset or 'an unrecorded dataset'}: their scores are not comparable, so the "
                    f"champion stays; promote by hand (registry promote) or register each dataset under its "
                    f"own mlflow.registered_model")
    else:
        promoted = val_ndcg > champion_score
        decision = (f"{label} {'beats' if promoted else 'does not beat'} the champion (version {champion.version}) "
                    f"on dataset {dataset}: validation NDCG@100 {val_ndcg:.4f} vs {champion_score:.4f}")
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    (log.info if promoted or champion_dataset == dataset else log.warning)("%s", decision)
    return {"name": name, "version": int(version.version), "promoted": promoted, "dataset": dataset,
            SCORE_TAG: val_ndcg, "previous_champion": None if champion is None else int(champion.version),
            f"previous_champion_{SCORE_TAG}": champion_score, "previous_champion_dataset": champion_dataset,
            "decision": decision}


def _versions_of(client: MlflowClient, name: str) -> list:
    """Every version of ``name``. MLflow's filter strings cannot escape a quote, so the name is
    quoted with a kind it lacks; a name with both kinds is matched by LIKE with ``_`` for each
    quote, and the exact name is kept."""
    if "'" not in name:
        query = f"name='{name}'"
    elif '"' not in name:
        query = f'name="{name}"'
    else:
        query = "name LIKE '" + name.replace("'", "_").replace('"', "_") + "'"
    return [v for v in client.search_model_versions(query) if v.name == name]


def _alias_version(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def require_model(client: MlflowClient, name: str):
    """The registered model ``name``, or an error listing the registered models."""
    try:
        return client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models()]
        raise LookupError(f"no registered model named {name!r}; registered models: {known or 'none'}") from None


def resolve(client: MlflowClient, name: str, ref: str):
    """A version by number or alias, with an error that names what exists."""
    require_model(client, name)
    if ref.isdigit():
        numbers = sorted(int(v.version) for v in _versions_of(client, name))  # str or int
        if int(ref) not in numbers:
            raise LookupError(f"model {name!r} has no version {ref}; versions: {numbers or 'none'}")
    found = client.get_model_version(name, ref) if ref.isdigit() else _alias_version(client, name, ref)
    if found is None:
        aliases = client.get_registered_model(name).aliases
        raise LookupError(f"model {name!r} has no alias {ref!r}; aliases: {aliases or 'none'}")
    return found


def versions(client: MlflowClient, name: str) -> list[dict]:
    """Every version with its aliases, run, validation and test metrics."""
    aliases = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for v in sorted(_versions_of(client, name), key=lambda v: int(v.version)):
        metrics = client.get_run(v.run_id).data.metrics if v.run_id else {}
        rows.append({"version": int(v.version), "aliases": sorted(aliases.get(str(v.version), [])),
                     "run_id": v.run_id, DATASET_TAG: v.tags.get(DATASET_TAG),
                     SCORE_TAG: float(v.tags.get(SCORE_TAG, "nan")),
                     **{k: metrics[k] for k in sorted(metrics) if k.startswith("test_")}})
    return rows


def lineage(client: MlflowClient, name: str, ref: str) -> dict:
    """Run, dataset and config behind a version or alias."""
    version = resolve(client, name, ref)
    run = client.get_run(version.run_id)
    params = mask_values(run.data.params)  # runs logged before params were masked
    return {"model": name, "version": int(version.version), "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id, "status": run.info.status,
            "dataset": {k.removeprefix("data."): v for k, v in params.items() if k.startswith("data.")},
            "config": {k: v for k, v in params.items() if not k.startswith("data.")},
            "tags": mask_values({k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")})}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recoder_dist.registry", description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else the config's mlflow.tracking_uri)")
    parser.add_argument("--config", help="YAML config whose mlflow.tracking_uri and mlflow.registered_model are "
                                         "the default store and name (default: conf/default.yaml)")
    parser.add_argument("--name", help="registered model name (default: the config's mlflow.registered_model)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="versions with aliases and metrics")
    promote = commands.add_parser("promote", help="point an alias at a version")
    promote.add_argument("version", help="version number")
    promote.add_argument("--alias", default=CHAMPION)
    demote = commands.add_parser("demote", help="remove an alias")
    demote.add_argument("alias")
    relog = commands.add_parser("relog", help="register a version logged with a pickled model (older "
                                              "recoder-dist) again, loading no pickled code; aliases move to it")
    relog.add_argument("version", help="version number")
    show = commands.add_parser("lineage", help="run, dataset and config of a version or alias")
    show.add_argument("ref", help="version number or alias")
    args = parser.parse_args(argv)

    try:
        configured = load_config(args.config).mlflow
    except ConfigError as error:
        print(f"registry: error: {error}", file=sys.stderr)
        return 2
    tracking_uri = resolve_tracking_uri(args.tracking_uri, os.environ, configured.tracking_uri)
    name = args.name or configured.registered_model
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        if args.command == "list":
            require_model(client, name)
            output = versions(client, name)
        elif args.command == "promote":
            resolve(client, name, args.version)
            client.set_registered_model_alias(name, args.alias, args.version)
            output = {"name": name, "alias": args.alias, "version": int(args.version)}
        elif args.command == "demote":
            resolve(client, name, args.alias)
            client.delete_registered_model_alias(name, args.alias)
            output = {"name": name, "removed_alias": args.alias}
        elif args.command == "relog":
            from recoder_dist.mlflow_model import relog_pickled
            resolve(client, name, args.version)
            output = relog_pickled(tracking_uri, name, args.version)
        else:
            output = lineage(client, name, args.ref)
    except (LookupError, MlflowException, ValueError) as error:
        message = error.message if isinstance(error, MlflowException) else str(error)
        print(f"registry: error: {message}", file=sys.stderr)
        return 2
    print(json.dumps(output, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
