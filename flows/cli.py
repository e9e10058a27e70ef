"""`fvlp` command line: one subcommand per flow, flags generated from the typed configs.

Each flag maps to one config field (nested groups are prefixed: ``--http-timeout-s``).
Values are handed to :func:`fvlp_core.config.resolve_config`, so the CLI, the
environment and Prefect deployment parameters go through the same validation.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import logging
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fvlp_core.config import (
    CleanConfig,
    ConfigError,
    EpisodesConfig,
    EvaluateConfig,
    FinetuneConfig,
    IndexConfig,
    IngestConfig,
    PipelineConfig,
    PretrainConfig,
    resolve_config,
    spread_paths,
)

# subcommand -> (config model, "module:flow function", one-line help)
COMMANDS: dict[str, tuple[type[BaseModel], str, str]] = {
    "ingest": (IngestConfig, "flows.ingest:ingest_flow", "Fetch LAION-Face images into sharded Parquet"),
    "clean": (CleanConfig, "flows.clean:clean_flow", "Detect/crop faces and filter captions with Dask"),
    "pretrain": (PretrainConfig, "flows.pretrain:pretrain_flow", "Image-text pretraining (ITC + ITM)"),
    "episodes": (
        EpisodesConfig,
        "flows.episodes:episodes_flow",
        "Sketch drawing episodes from cleaned faces or FS2K-SDE",
    ),
    "finetune": (FinetuneConfig, "flows.finetune:finetune_flow", "Sketch-text fusion fine-tuning (ITC + ITSC + ITM)"),
    "evaluate": (EvaluateConfig, "flows.evaluate:evaluate_flow", "SLFIR metrics into the DuckDB results store"),
    "index": (IndexConfig, "flows.index:index_flow", "Embed a gallery of photos for `fvlp app` to search"),
    "run": (
        PipelineConfig,
        "flows.pipeline:pipeline_flow",
        "The whole DAG: ingest -> clean -> pretrain, episodes -> finetune -> evaluate",
    ),
}

# subcommand -> ("module:main", one-line help): operations with a few flags of their own, no config.
TOOLS: dict[str, tuple[str, str]] = {
    "serve": ("flows.serve:main", "Register prefect.yaml's deployments with a Prefect server and run them"),
    "status": ("flows.status:main", "Summarise the last runs in the results store"),
    "app": ("fvlp_app.server:main", "Serve the drawing page and query API over a gallery index"),
    "convert-checkpoint": (
        "flows.convert:main",
        "Convert OpenAI's TorchScript CLIP weights to safetensors without running their code",
    ),
}

METAVARS = {Path: "PATH", int: "INT", float: "NUMBER", str: "TEXT"}

ENV_EPILOG = (
    "Every option can also come from the environment: FVLP_<FIELD> (e.g. FVLP_DATA_ROOT), "
    "nested groups as FVLP_<GROUP>__<FIELD> (e.g. FVLP_HTTP__CONCURRENCY); flags win."
)

# Flags shared by every stage's `paths` group are spelled without a prefix.
FLAT_GROUPS = {"paths"}


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _flag_kwargs(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is list:
        item = args[0] if args and args[0] in METAVARS else str
        return {"nargs": "+", "type": item, "metavar": METAVARS[item]}
    if origin is tuple and args:
        return {"nargs": len(args), "type": args[0], "metavar": METAVARS.get(args[0], "VALUE")}
    if origin is dict:
        return {"type": json.loads, "metavar": "JSON"}
    if origin is typing.Literal:
        return {"choices": [str(a) for a in args]}
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _flag_kwargs(args[0])
    return {"metavar": METAVARS.get(annotation, "VALUE")}


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel], prefix: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per leaf field of ``model``; dest encodes the nesting path."""
    for name, field in model.model_fields.items():
        path = prefix + (name,)
        if _is_model(field.annotation):
            add_model_flags(parser, field.annotation, path)
            continue
        flat = [i for i, part in enumerate(path) if part in FLAT_GROUPS]
        visible = path[flat[-1] + 1 :] if flat else path
        flag = "--" + "-".join(visible).replace("_", "-")
        if any(flag in action.option_strings for action in parser._actions):
            continue  # the pipeline has one --data-root for every stage's paths
        default = field.default if field.default_factory is None else field.default_factory()
        parser.add_argument(
            flag,
            dest="__".join(path),
            default=argparse.SUPPRESS,
            help=f"{field.description or ''} (default: {default})".strip(),
            **_flag_kwargs(field.annotation),
        )


def _overrides(namespace: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """Turn ``a__b__c=value`` dests into nested dicts; a flat --data-root reaches every ``paths``."""
    flat = {k: v for k, v in vars(namespace).items() if "__" in k or k in model.model_fields}
    nested: dict[str, Any] = {}
    for dest, value in flat.items():
        node = nested
        *parents, leaf = dest.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return spread_paths(model, nested, _collect_paths(nested))


def _collect_paths(tree: dict[str, Any]) -> dict[str, Any]:
    for key, value in tree.items():
        if key == "paths":
            return value
        if isinstance(value, dict):
            found = _collect_paths(value)
            if found:
                return found
    return {}


def _load(target: str) -> Callable[..., Any]:
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fvlp", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fvlp {importlib.metadata.version('fvlp')}")
    parser.add_argument(
        "--debug", action="store_true", help="Show tracebacks (default: a failed run ends with one line saying why)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (model, _, help_text) in COMMANDS.items():
        add_model_flags(sub.add_parser(name, help=help_text, description=help_text, epilog=ENV_EPILOG), model)
    for name, (_, help_text) in TOOLS.items():
        sub.add_parser(name, help=help_text, add_help=False)  # listed here, parsed by the tool itself
    return parser


# Prefect gives its temporary server 20 s to answer; a first start (database migrations) on a
# busy 2-core machine takes longer, and the run died before doing anything. Seconds of waiting.
EPHEMERAL_STARTUP_BUDGET_S = 300


def _quiet_prefect() -> None:
    """Set before Prefect is imported; values the user exported win."""
    # Offline machines: no telemetry, and no attempt to phone home.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_BUDGET_S))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:
        _quiet_prefect()
        return _load(TOOLS[argv[0]][0])(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    model, target, _ = COMMANDS[args.command]
    try:
        config = resolve_config(model, _overrides(args, model))
    except ConfigError as err:
        parser.error(str(err))
    _quiet_prefect()
    if not args.debug:
        _console_without_tracebacks()
    try:
        result = _load(target)(config)
    except Exception as err:  # any failure of the run: its reason, in one line, is what a user needs
        if args.debug:
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"fvlp {args.command}: error: {reason} (--debug shows the traceback)", file=sys.stderr)
        return 1
    if result is not None:
        print(result)
    return 0


class _WithoutTraceback(logging.Formatter):
    """Formats as ``inner`` does, leaving out an attached traceback (a copy of the record is
    formatted: other handlers, such as the one sending logs to the Prefect API, keep it)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return self.inner.format(record)


def _console_without_tracebacks() -> None:
    """Prefect's terminal handlers print every failed task and flow with its traceback (a bad
    metadata file made 133 lines); the terminal gets the messages, the Prefect API the rest."""
    from prefect.logging.configuration import setup_logging

    setup_logging()
    for name in ("prefect", ""):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setFormatter(_WithoutTraceback(handler.formatter))


if __name__ == "__main__":
    sys.exit(main())
