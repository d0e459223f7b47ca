"""The dgl-iflow command: demos, and training, evaluating and sampling on the library's data sets or your own.

Every command reports a bad argument or bad input as one line "dgl-iflow: error: ..." on stderr,
with exit status 2 for a command line that does not parse and 1 for other failures; --debug
shows the Python traceback instead. Every file a command writes appears whole or not at all.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import textwrap
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .models.base import CONVS

#: Exit status of a command that failed on its input, files or data.
FAILED = 1
#: Exit status of a command line that does not parse (argparse's own).
USAGE = 2
#: What ``sample --out`` may end in, and what each writes.
SAMPLE_FORMATS = {".pt": "a torch tensor (n, V, d)", ".npy": "a NumPy array (n, V, d)",
                  ".csv": "a table with a header, one row per sample and one column per node and feature",
                  ".png": "a scatter plot of the first two features per node"}
#: The files of a training run folder that ``--resume`` needs and compares.
RUN_RECORD = "run.json"


class _UsageError(Exception):
    """Raised instead of argparse's exit, so that ``main`` prints one line and returns."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # noqa: D102  (argparse API)
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (they hold tables), and every option's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # By identity: a default of 0 is shown, one of None (the recipe's) or False is not.
        if (not action.option_strings or any(action.default is value for value in (None, False, argparse.SUPPRESS))
                or "default" in text or action.nargs == 0):
            return text
        return f"{text} (default: %(default)s)".lstrip()


# -- argument types: a bad value is a usage error naming the option ------------------------------

def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def _number(text: str, valid: Callable[[float], bool], requirement: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"{requirement}, got {text}")
    return value


def _positive(text: str) -> float:
    return _number(text, lambda value: math.isfinite(value) and value > 0, "must be a number > 0")


def _fraction(text: str) -> float:
    return _number(text, lambda value: 0.0 < value < 1.0, "must lie in (0, 1)")


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text}: this torch sees no CUDA device; use --device cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: this torch sees {count} CUDA device(s), 0 to {count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this torch has no MPS device; use --device cpu")
    return text


def _parse_labels(text: str, real: bool = False) -> torch.Tensor:
    """``--labels``: comma-separated integers, or finite numbers for a model of real-valued targets."""
    try:
        if real:
            values = torch.tensor([float(value) for value in text.split(",")], dtype=torch.float64)
            if values.isfinite().all():
                return values
        else:
            return torch.tensor([int(value) for value in text.split(",")])
    except ValueError:
        pass
    example = "0.5,-1.2,2" if real else "0,1,0"
    raise ValueError(f"--labels must be comma-separated {'finite numbers' if real else 'integers'} such as "
                     f"{example}; got {text!r}")


def _parse_means(text: str) -> list[list[float]]:
    try:
        means = [[float(value) for value in mean.split(",")] for mean in text.split(";")]
    except ValueError:
        means = None
    if not means or not all(math.isfinite(value) for mean in means for value in mean):
        raise ValueError(f"--means must be comma-separated numbers per class, ';' between classes, such as "
                         f"'2,-2;-2,2'; got {text!r}")
    return means


def _output(path: str, option: str) -> Path:
    """``path`` as given, once its folder is known to exist: checked before any long computation."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{option} {out} is a folder; give a file name")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{option} {out}: the folder {out.parent} does not exist")
    return out


# -- data sets ---------------------------------------------------------------------------------

def _dataset(args: argparse.Namespace, target: str | None = None):
    """The data set of ``--dataset NAME`` or ``--data FILE`` (with ``--edges``), its nodes labelled
    by ``--target`` (else ``target``, else the data set's default)."""
    from .data import dataset_targets, list_datasets, load_dataset
    from .data.user import USER_TARGETS, load_graph_data

    target = args.target or target
    if args.data is not None:
        if target is not None and target not in USER_TARGETS:
            raise ValueError(f"--target with --data is one of {', '.join(USER_TARGETS)}, got {target!r}")
        return load_graph_data(args.data, args.edges, undirected=args.undirected, test_fraction=args.test_fraction,
                               target=target or USER_TARGETS[0])
    if args.edges is not None or args.undirected:
        raise ValueError("--edges and --undirected go with --data (your own data set), not with --dataset")
    kwargs: dict[str, Any] = {"root": args.data_root} if args.data_root and args.dataset in ("traffic", "solar") else {}
    if target is not None and args.dataset in list_datasets():
        choices = dataset_targets(args.dataset)
        if target not in choices:
            offered = "; ".join(f"{name}: {', '.join(dataset_targets(name))}" for name in list_datasets()
                                if dataset_targets(name))
            raise ValueError(f"--target {target!r} is not a target of {args.dataset} "
                             f"({', '.join(choices) if choices else 'it has one kind of label'}); targets: {offered}; "
                             f"--data: {', '.join(USER_TARGETS)}")
        kwargs["target"] = target
    return load_dataset(args.dataset, **kwargs)


def _data_units(dataset) -> dict[str, Any]:
    """What ``sample`` needs to write samples in the data's own units and name their columns."""
    from .data.scaling import feature_scale

    scale = feature_scale(dataset)
    shape = (dataset.num_nodes, dataset.num_features)
    mean, std = scale if scale is not None else (torch.zeros(shape, dtype=torch.float64),
                                                 torch.ones(shape, dtype=torch.float64))
    return dict(dataset=dataset.name, standardized=scale is not None, mean=mean, std=std,
                node_names=list(dataset.node_names), feature_names=list(dataset.feature_names),
                target=dataset.info.get("target"))


# -- commands ------------------------------------------------------------------------------------

def _demo(args: argparse.Namespace) -> None:
    from .demos import chordal, expressiveness, three_moons

    demo = {"expressiveness": expressiveness, "chordal": chordal, "three-moons": three_moons}[args.name]
    if args.nodes is not None and args.name != "chordal":
        raise ValueError(f"--nodes applies to the chordal demo only, not to {args.name}")
    out = Path(args.out or f"runs/{args.name}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    options = (("epochs", args.epochs), ("num_blocks", args.blocks), ("p", args.nodes))
    settings = {key: value for key, value in options if value is not None}
    demo.run(out, seed=args.seed, progress=not args.no_progress, **settings)


def _datasets(args: argparse.Namespace) -> None:
    from .data import download_dataset, list_datasets, real_datasets, resolve_root, verify_dataset
    from .data.download import MIRROR_ENV_VAR

    unknown = [name for name in args.names if name not in list_datasets()]
    if unknown:
        raise ValueError(f"unknown data set(s) {', '.join(unknown)}; valid names: {', '.join(list_datasets())}")
    root = resolve_root(args.data_root)
    print(f"data root: {root.describe()}")
    if os.environ.get(MIRROR_ENV_VAR):
        print(f"downloads from the mirror {os.environ[MIRROR_ENV_VAR]} ({MIRROR_ENV_VAR}), not the sources below")
    missing = damaged = False
    for name in args.names or list_datasets():
        if name not in real_datasets():
            print(f"{name:16} generated on the fly")
            continue
        if args.download or args.replace:
            reports = download_dataset(name, root, replace=args.replace, progress=not args.no_progress)
        else:
            reports = verify_dataset(name, root)
        statuses = {report.status for report in reports.values()}
        # A file not downloaded yet is the normal state before first use, not a problem.
        state = "ok" if statuses == {"ok"} else "not downloaded" if statuses <= {"ok", "missing"} else "PROBLEM"
        missing |= "missing" in statuses
        damaged |= state == "PROBLEM"
        folder = next(iter(reports.values())).path.parent
        print(f"{name:16} {state:14} {folder}")
        for report in reports.values():
            status = "not downloaded" if report.status == "missing" else report.status
            print(f"    {report.name:40} {report.expected_size:>11,} bytes  {status:17} {report.url}")
    if missing:
        print("files not downloaded yet are downloaded on first use, or now with `dgl-iflow datasets --download`")
    if damaged:
        print("PROBLEM: a file has another size or checksum than published (it may be your own); "
              "`dgl-iflow datasets --replace` downloads the published one over it (docs/datasets.md)")


def _run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``train`` options that decide what a run computes, by option name, as given.

    ``--resume`` compares them with the run's own; ``--epochs`` may grow and is not among them,
    nor are options that do not change the result (``--device``, ``--chunk-size``, ...).
    """
    data = None if args.data is None else str(Path(args.data).resolve())
    edges = None if args.edges is None else str(Path(args.edges).resolve())
    settings: dict[str, Any] = {
        "--dataset": args.dataset, "--data": data, "--edges": edges, "--undirected": args.undirected,
        "--target": args.target or _default_target(args.dataset, data),
        "--test-fraction": args.test_fraction if data else None, "--conv": args.conv, "--blocks": args.blocks,
        "--hidden": args.hidden, "--sigma": args.sigma, "--means": args.means, "--fixed-means": args.fixed_means,
        "--lipschitz": args.lipschitz,
    }
    for name in _LEAVE_OUT:
        settings[f"--no-{name}"] = not getattr(args, name.replace("-", "_"))
    settings.update({"--batch-size": args.batch_size, "--lr": args.lr, "--seed": args.seed,
                     "--patience": args.patience,
                     "--validation-fraction": None if args.patience is None else args.validation_fraction})
    return settings


def _default_target(dataset: str | None, data: str | None) -> str | None:
    """What the nodes of ``--dataset`` or ``--data`` are labelled with when ``--target`` is not given."""
    from .data import dataset_targets, list_datasets
    from .data.user import USER_TARGETS

    if data is not None:
        return USER_TARGETS[0]
    targets = dataset_targets(dataset) if dataset in list_datasets() else ()
    return targets[0] if targets else None


def _shown(value: Any) -> str:
    if value is None or value is False:
        return "(not given)"
    if value is True:
        return "(given)"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def _resumable(out: Path, settings: dict[str, Any], epochs: int | None) -> tuple[int, int | None]:
    """Check that ``--resume`` can continue the run in ``out``; the epochs it has trained and the
    epochs to train to (``--epochs``, else the run's own)."""
    from .checkpoints import read_checkpoint

    checkpoint_path = out / "model.pt"
    if not checkpoint_path.is_file():
        held = "it does not exist" if not out.exists() else "it holds no model.pt"
        raise ValueError(f"nothing to resume in {out}: {held}; start the run without --resume")
    record = None
    if (out / RUN_RECORD).is_file():
        try:
            record = json.loads((out / RUN_RECORD).read_text())
            saved = dict(record["settings"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{out / RUN_RECORD} is not the run record `dgl-iflow train` writes ({err}); pass "
                             f"--overwrite to train afresh in {out}") from None
        # An option a run's record lacks came after the run: a --no-* one was not given, and
        # the nodes were labelled as they are by default.
        saved = {name: False for name in settings if name.startswith("--no-")} | saved
        saved.setdefault("--target", _default_target(saved.get("--dataset"), saved.get("--data")))
        differences = [f"{name} {_shown(saved.get(name))} -> {_shown(value)}"
                       for name, value in settings.items() if saved.get(name) != value]
        if differences:
            raise ValueError(f"cannot resume {out}: it was trained with other settings: {', '.join(differences)} "
                             f"(run's -> given). --resume continues a run with its own settings, where only "
                             f"--epochs may grow: repeat them, or pass --overwrite to train afresh in {out}")
    checkpoint = read_checkpoint(checkpoint_path)
    if "epoch" not in checkpoint or "optimizer" not in checkpoint:
        raise ValueError(f"{checkpoint_path} holds a model without its training state (saved by model.save, not "
                         f"by training), so training cannot resume from it; pass --overwrite to train afresh")
    done = int(checkpoint["epoch"])
    if epochs is None and record is not None:
        epochs = record.get("epochs")
    if epochs is not None and epochs < done:
        raise ValueError(f"--epochs {epochs} is below the {done} epochs {out} has trained already; --resume "
                         f"continues or extends a run: pass --epochs {done} or more")
    return done, epochs


#: ``train --no-NAME`` options, each leaving out a part of the recipe's model or training.
_LEAVE_OUT = {
    "graph-mean": "the graph-mean operator of the convolutions",
    "graph-mean-linear": "the graph-mean linear layer at the data end",
    "node-affine": "the per-node affine layer at the latent end",
    "label-context": "the label context (latent means shifted by the label vector, prediction by Bayes over the "
                     "training label vectors)",
    "label-vector-gaussians": "the joint latent Gaussian per training label vector fitted once trained (the node "
                              "law for every label vector)",
    "readout": "the discriminative head fitted once trained (prediction by Bayes' rule in the latent)",
}


def _train(args: argparse.Namespace) -> None:
    import dataclasses

    from . import plots
    from .checkpoints import atomic_save, read_checkpoint
    from .data import holdout
    from .files import atomic_write_json, replacing_folder
    from .recipe import recipe_config, recipe_model
    from .training import fit

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a run folder")
    held = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    settings = _run_settings(args)
    done, epochs = 0, args.epochs
    if args.resume:
        done, epochs = _resumable(out, settings, args.epochs)
    elif held and not args.overwrite:
        listing = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise ValueError(f"{out} already holds a run ({listing}); pass --resume to continue or extend it, "
                         f"--overwrite to replace it, or choose another --out")
    elif held and not {"model.pt", RUN_RECORD} & set(held):
        # --overwrite deletes the whole folder: only one that a run wrote.
        raise ValueError(f"{out} holds files but no run of `dgl-iflow train` (no model.pt or {RUN_RECORD}), and "
                         f"--overwrite would delete them all; choose another --out, or empty it yourself")

    dataset = _dataset(args)
    x_train, y_train = dataset.split("train")
    validation = {}
    if args.patience is not None:
        (x_train, y_train), (x_val, y_val) = holdout(x_train, y_train, args.validation_fraction, args.seed)
        validation = dict(x_val=x_val, y_val=y_val)
    given = dict(num_blocks=args.blocks, hidden_feats=None if args.hidden is None else tuple(args.hidden),
                 sigma=args.sigma, means=None if args.means is None else _parse_means(args.means),
                 lipschitz_coeff=args.lipschitz)
    changes = {key: value for key, value in given.items() if value is not None}
    changes.update({key: False for key in ("graph_mean", "graph_mean_linear", "node_affine", "label_context")
                    if not getattr(args, key)})
    if args.fixed_means:
        changes.update(trainable_means=False, **({} if dataset.num_classes is None else dict(min_separation=None)))
    if dataset.num_classes is None:
        if args.means is not None:
            raise ValueError("--means places the latent means of classes; this data set has real-valued targets "
                             "(their latent mean is a learned linear map of the targets)")
        if not args.label_context:
            raise ValueError("--no-label-context leaves out the label context of classes; this data set has "
                             "real-valued targets")
        y_shape = dataset.split("train")[1].shape
        changes["label_dim"] = y_shape[2] if len(y_shape) == 3 else None
    model = recipe_model(dataset.graph, dataset.num_features, dataset.num_classes, conv=args.conv, **changes)
    config = recipe_config(
        args.dataset, chunk_size=args.chunk_size, lr=args.lr, seed=args.seed, patience=args.patience,
        label_vector_gaussians=args.label_vector_gaussians, readout=args.readout, progress=not args.no_progress,
        device=args.device,
        **({} if epochs is None else dict(epochs=epochs)),
        **({} if args.batch_size is None else dict(batch_size=args.batch_size)),
    )

    def train_into(folder: Path):
        checkpoint = folder / "model.pt"
        recorded = []

        def record_run(epoch: int, record: dict[str, float]) -> None:
            # Written with the first checkpoint, so a run that fails before leaves an empty folder.
            if not recorded:
                atomic_write_json(folder / RUN_RECORD, dict(command="train", settings=settings, epochs=config.epochs))
                recorded.append(epoch)

        history = fit(model, dataset.graph, x_train, y_train,
                      dataclasses.replace(config, checkpoint_path=str(checkpoint)),
                      resume_from=checkpoint if args.resume else None, callback=record_run, **validation)
        if len(history.epochs) > done:
            saved = read_checkpoint(checkpoint)
            atomic_save({**saved, "data_units": _data_units(dataset)}, checkpoint)
            atomic_write_json(folder / "history.json", history.epochs)
            plots.training_curves(history, folder / "curves.png", title=f"{dataset.name}: training")
        return history

    if held and args.overwrite:
        # Built beside the old run, which it replaces only once finished: a failure keeps the old one.
        with replacing_folder(out) as folder:
            history = train_into(folder)
    else:
        out.mkdir(parents=True, exist_ok=True)  # only once the arguments have proved valid
        history = train_into(out)
    if len(history.epochs) == done:
        why = "it stopped early (--patience)" if history.stopped_early else f"it has trained all {done} epochs"
        print(f"nothing to train in {out}: {why}; a larger --epochs extends it")
        return
    kept = "" if history.best_epoch is None or args.patience is None else f"; kept epoch {history.best_epoch}"
    print(f"wrote {out / 'model.pt'}, {out / 'history.json'} and {out / 'curves.png'}; "
          f"last epoch: {history.last()}{kept}")


def _evaluate(args: argparse.Namespace) -> None:
    from .checkpoints import read_checkpoint
    from .files import atomic_write_text, json_text
    from .models import IGNN

    out = None if args.out is None else _output(args.out, "--out")
    checkpoint = read_checkpoint(args.checkpoint)
    model = IGNN.from_checkpoint(checkpoint).eval()
    trained_on = checkpoint.get("data_units")
    recorded = None if trained_on is None else trained_on.get("target")
    if args.target is not None and recorded is not None and args.target != recorded:
        raise ValueError(f"{args.checkpoint} was trained with --target {recorded}, not {args.target}: leave "
                         "--target out to evaluate on the targets it was trained with")
    dataset = _dataset(args, target=recorded)
    model.check_graph(dataset.graph)  # another node count is said first, in the model's words
    if model.continuous != (dataset.num_classes is None):
        kinds = ("real-valued targets", "class labels")
        model_kind, data_kind = kinds[not model.continuous], kinds[dataset.num_classes is not None]
        raise ValueError(f"{args.checkpoint} models {model_kind}, but {args.data or args.dataset} is labelled with "
                         f"{data_kind}: give the --target it was trained with (its run.json lists it)")
    mean = _data_units(dataset)["mean"]
    if trained_on is not None and trained_on["mean"].shape == mean.shape and not torch.allclose(trained_on["mean"], mean):
        # The standardization is fitted on the training part: another split gives other statistics.
        raise ValueError(f"{args.data or args.dataset} is not split or scaled as when {args.checkpoint} was trained "
                         "(give the --test-fraction, --edges and --undirected that train had: its run.json lists them)")
    report = (_target_metrics if model.continuous else _class_metrics)(args, model, dataset, out)
    text = json_text(report)
    print(text)
    if out is not None:
        atomic_write_text(out, text + "\n")


def _target_metrics(args: argparse.Namespace, model, dataset, out: Path | None) -> dict[str, Any]:
    """``evaluate``'s report for a model of real-valued targets (:func:`~dgl_iflow.evaluation.target_report`),
    with ``FILE_sweep.png`` and ``FILE_predictions.png`` beside ``out``."""
    from . import plots
    from .evaluation import target_report

    x_train, y_train = dataset.split("train")
    x_test, y_test = dataset.split("test")
    report = target_report(model, dataset.graph, x_train, y_train, x_test, y_test,
                           calibration_fraction=args.calibration_fraction, seed=args.seed)
    shown = report.pop("figure")
    result = dict(dataset=dataset.name, checkpoint=str(args.checkpoint), **report)
    if out is not None:
        stem = out.with_suffix("")
        result["figures"] = [
            str(plots.target_sweep(x_test, y_test, shown["generated"], f"{stem}_sweep.png",
                                   feature_name=dataset.feature_names[0],
                                   title=f"{dataset.name}: test rows vs generated given their targets")),
            str(plots.predicted_vs_true(shown["targets"], shown["prediction"], shown["lower"], shown["upper"],
                                        f"{stem}_predictions.png", level=0.9,
                                        title=f"{dataset.name}: predictions and calibrated intervals")),
        ]
    return result


def _class_metrics(args: argparse.Namespace, model, dataset, out: Path | None) -> dict[str, Any]:
    """``evaluate``'s report for a model of class labels: the paper's protocol, node accuracy and
    :func:`~dgl_iflow.evaluation.uncertainty_report`, with three figures beside ``out``."""
    from . import metrics
    from .evaluation import uncertainty_report
    from .progress import progress_bar

    x_test, y_test = dataset.split("test")
    graph = dataset.graph
    torch.manual_seed(args.seed)
    proba = model.predict_proba(graph, x_test)
    generated: dict[tuple[int, ...], torch.Tensor] = {}  # kept for the figures
    with progress_bar(total=args.top, desc="generate per label vector", unit="label vector",
                      disable=args.no_progress) as bar:
        def generate(labels: torch.Tensor, n: int) -> torch.Tensor:
            samples = generated[tuple(labels.tolist())] = model.sample(graph, labels, n)
            bar.update(1)
            return samples

        result = metrics.paper_protocol(x_test, y_test, generate, top=args.top)
    x_train, y_train = dataset.split("train")
    uncertainty = uncertainty_report(model, graph, x_train, y_train, x_test, y_test,
                                     calibration_fraction=args.calibration_fraction, seed=args.seed)
    curves = uncertainty.pop("curves")
    report = dict(
        dataset=dataset.name, checkpoint=str(args.checkpoint),
        mmd=result["mmd"], energy=result["energy"],
        node_accuracy=metrics.node_accuracy(proba, y_test),
        node_log_loss=metrics.node_log_loss(proba, y_test),
        node_calibration_error=metrics.calibration_error(proba, y_test),
        uncertainty=uncertainty,
    )
    if out is not None:
        radius = uncertainty["sets"]["0.9"]["split_radius"]
        report["figures"] = _evaluation_figures(model, dataset, x_test, y_test, generated, proba, curves, radius, out)
    return report


def _evaluation_figures(model, dataset, x_test, y_test, generated, proba, curves, radius: float,
                        out: Path) -> list[str]:
    """Generated-vs-real (with the calibrated 90 % sets' edges), predicted-probability and
    reliability PNGs beside ``out``, named after its stem."""
    import math

    from . import plots

    real = {key: x_test[(y_test == torch.tensor(key)).all(dim=1)] for key in generated}
    edges = None
    if math.isfinite(radius):
        edges = {key: model.uncertainty_set(dataset.graph, torch.tensor(key), level=0.9, num_points=40, radius=radius,
                                            generator=torch.Generator().manual_seed(0)) for key in generated}
    stem = out.with_suffix("")
    paths = [plots.generated_vs_real(real, generated, f"{stem}_samples.png", feature_names=dataset.feature_names,
                                     title=f"{dataset.name}: test rows vs generated", boundary=edges,
                                     boundary_name="whole samples on the edge of the calibrated 90 % set"),
             plots.node_probabilities(proba, y_test, f"{stem}_proba.png",
                                      node_names=dataset.node_names),
             plots.reliability_diagram(curves, f"{stem}_reliability.png",
                                       title=f"{dataset.name}: coverage and calibration on held-out test rows")]
    return [str(path) for path in paths]


def _csv_text(samples: torch.Tensor, node_names: Sequence[str], feature_names: Sequence[str]) -> str:
    """One row per sample; columns NODE:FEATURE, node by node, each node's features in order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # Numbers alone would read as values: node "3" is written node3.
    nodes = [f"node{node}" if str(node).isdigit() else str(node) for node in node_names]
    writer.writerow([f"{node}:{feature}" for node in nodes for feature in feature_names])
    # repr-exact for float64, and 9 significant digits round-trip float32.
    digits = 17 if samples.dtype == torch.float64 else 9
    for row in samples.flatten(1).tolist():
        writer.writerow([f"{value:.{digits}g}" for value in row])
    return buffer.getvalue()


def _real_rows(units: dict[str, Any] | None, labels: torch.Tensor, standardized: bool) -> torch.Tensor | None:
    """The test rows of the model's built-in data set with label vector ``labels``, in the units
    the samples are written in, for the figure; ``None`` for other data or no such row."""
    from .data import list_datasets, load_dataset
    from .data.scaling import to_data_units

    if units is None or units["dataset"] not in list_datasets():
        return None
    x_test, y_test = load_dataset(units["dataset"]).split("test")
    rows = x_test[(y_test == labels).all(dim=1)]
    if not len(rows):
        return None
    return rows if standardized or not units["standardized"] else to_data_units(rows, units["mean"], units["std"])


def _sample(args: argparse.Namespace) -> None:
    import numpy as np

    from .checkpoints import read_checkpoint
    from .data.scaling import to_data_units
    from . import plots
    from .files import atomic_write, atomic_write_text
    from .models import IGNN

    out = _output(args.out, "--out")
    if out.suffix.lower() not in SAMPLE_FORMATS:
        raise ValueError(f"--out {out}: unknown file type {out.suffix or '(none)'!r}; sample writes "
                         f"{', '.join(SAMPLE_FORMATS)} by the name's ending")
    checkpoint = read_checkpoint(args.checkpoint)
    model = IGNN.from_checkpoint(checkpoint).eval()
    labels = _parse_labels(args.labels, real=model.continuous)
    if model.continuous:
        per_node = math.prod(model.label_shape)
        if labels.numel() != model.num_nodes * per_node:
            each = "one per node" if per_node == 1 else f"{per_node} per node, node by node"
            raise ValueError(f"--labels needs {model.num_nodes * per_node} targets ({each} of the model's "
                             f"{model.num_nodes} nodes); got {labels.numel()}")
        labels = labels.reshape(model.num_nodes, *model.label_shape)
    elif labels.shape != (model.num_nodes,) or int(labels.min()) < 0 or int(labels.max()) >= model.num_classes:
        raise ValueError(f"--labels needs {model.num_nodes} labels (one per node of the model's graph) in "
                         f"[0, {model.num_classes}); got {args.labels}")
    units = checkpoint.get("data_units")
    torch.manual_seed(args.seed)
    samples = model.sample(model.graph, labels, args.n)
    if args.standardized:
        scale = "in the model's standardized units"
    elif units is None:
        scale = ("in the units the model was trained in (the checkpoint does not record its data set's "
                 "standardization: it was not written by `dgl-iflow train`, or its training has not finished)")
    elif units["standardized"]:
        samples = to_data_units(samples, units["mean"].to(samples.device), units["std"].to(samples.device))
        scale = f"in the units of the data ({units['dataset']}); --standardized writes the model's units"
    else:
        scale = f"in the units of the data ({units['dataset']}, which is not standardized)"
    nodes = units["node_names"] if units else [f"node{node}" for node in range(model.num_nodes)]
    features = units["feature_names"] if units else [f"x{feature + 1}" for feature in range(model.feats)]
    suffix = out.suffix.lower()
    if suffix == ".png":
        if args.standardized and units and units["standardized"]:
            plot_units = "standardized units"
        else:
            plot_units = None if units is None else f"{units['dataset']} units"
        if model.continuous:  # no test row has exactly these targets; nodes grouped by index
            shown = ", ".join(f"{value:g}" for value in labels.flatten()[:6].tolist())
            extra = dict(labels=None, real=None, title=f"X | Y = ({shown}{', ...' if labels.numel() > 6 else ''})")
        else:
            extra = dict(labels=labels, real=_real_rows(units, labels, args.standardized))
        plots.generated_samples(samples, out, **extra,
                                feature_names=features[:2], node_names=units["node_names"] if units else None,
                                units=plot_units)
    elif suffix == ".csv":
        atomic_write_text(out, _csv_text(samples, nodes, features))
    elif suffix == ".npy":
        array = samples.cpu().numpy()
        atomic_write(out, lambda file: np.save(file, array))
    else:
        atomic_write(out, lambda file: torch.save(samples.cpu(), file))
    print(f"wrote {args.n} samples of shape {tuple(samples.shape[1:])} to {out}, {scale}")


def _convert_checkpoint(args: argparse.Namespace) -> None:
    from .checkpoints import convert_checkpoint

    convert_checkpoint(args.source, args.target)
    print(f"wrote {args.target}, which loads without running code from the file")


_DATA_FORMATS = """\
Your own data set (--data FILE), a NumPy .npz archive or a torch.save .pt dict of tensors:
  x            (N, V, d) real features: N samples, V nodes, d features per node
  y            (N, V) integer labels 0, 1, ... (the classes are 0 .. max(y)); with --target real,
               real-valued targets (N, V) or (N, V, q), kept in their own units
  edge_index   (2, E) integer node ids in [0, V): row 0 sources, row 1 targets; the target
               aggregates the source, so list both directions of an undirected edge (or give
               --undirected) and v -> v for a node to see itself. Or instead --edges FILE: a
               text file with one edge 'src dst' per line, '#' starting a comment
  split        optional (N,): 0 train, 1 test (or 'train'/'test' in a .npz); without it a
               random --test-fraction of the samples (seed 0) is the test part
  node_names, feature_names   optional V and d names, for the headers `sample` writes
Features are standardized per node and feature with the training part's mean and standard
deviation, as the real data sets are; `sample` writes samples back in the data's own units.
See docs/datasets.md."""


def build_parser() -> argparse.ArgumentParser:
    # --debug works before or after the command; the command's copy only overrides when given.
    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the Python traceback of an error instead of one line")
    parser = _Parser(prog="dgl-iflow", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, writes: str, details: str | None = None) -> argparse.ArgumentParser:
        # Descriptions are printed as written (the data formats are a table): wrapped here.
        description = textwrap.fill(f"{help[0].upper()}{help[1:]}. {writes}", width=94)
        return commands.add_parser(name, help=help, parents=[debug], formatter_class=_HelpFormatter,
                                   description=description if details is None else f"{description}\n\n{details}")

    def data_root(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--data-root", default=None,
                         help="root of the real data sets (default: $DGL_IFLOW_DATA, else ~/.dgl_iflow/data); "
                              "missing files are downloaded into it")

    def data_arguments(sub: argparse.ArgumentParser, what: str) -> None:
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument("--dataset", help=f"{what}: a name from `dgl-iflow datasets`")
        source.add_argument("--data", metavar="FILE", help=f"{what}: your own .npz or .pt file (formats below)")
        sub.add_argument("--edges", metavar="FILE", default=None,
                         help="with --data: the graph as an edge-list text file, when FILE has no edge_index")
        sub.add_argument("--undirected", action="store_true", help="with --data: add dst -> src for every edge")
        sub.add_argument("--test-fraction", type=_fraction, default=0.2,
                         help="with --data, when FILE has no split: the share of samples in the test part")
        sub.add_argument("--target", default=None,
                         help="what the nodes are labelled with: traffic anomaly (default) or next_flow, solar ramp "
                              "(default) or next_dhi; with --data classes (default) or real. Real-valued targets "
                              "train a model of X | Y = y for any real y (docs/continuous.md)")
        data_root(sub)

    demo = command("demo", "run a demonstration",
                   "Writes its figures and JSON results into --out (default runs/NAME) and prints a summary.")
    demo.add_argument("name", choices=["expressiveness", "chordal", "three-moons"],
                      help="expressiveness: spectral vs spatial layers on a 3-node graph; chordal: generated vs "
                           "exact covariances on the chordal cycle graph; three-moons: one node, three classes, "
                           "with uncertainty sets")
    demo.add_argument("--out", default=None, help="output folder (default runs/NAME)")
    demo.add_argument("--epochs", type=_count(1), default=None, help="default: the demo's own")
    demo.add_argument("--blocks", type=_count(1), default=None, help="default: the demo's own")
    demo.add_argument("--nodes", type=_count(2), default=None,
                      help="chordal only: number of nodes, a prime (default 503)")
    demo.add_argument("--seed", type=_count(0), default=0, help="seeds the data, training and sampling")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    demo.set_defaults(run=_demo)

    datasets = command("datasets", "list the data sets, check the real files, download them",
                       "Lists every data set and, for those read from files, each file's size, status (ok, "
                       "not downloaded, or a PROBLEM: another size or checksum) and source. Writes nothing "
                       "unless --download or --replace is given; those write the downloaded files into "
                       "DATA_ROOT/<data set>/.")
    datasets.add_argument("names", nargs="*", help="data sets to show (default: all)")
    data_root(datasets)
    datasets.add_argument("--download", action="store_true",
                          help="download the missing files, checked against their size and sha256")
    datasets.add_argument("--replace", action="store_true",
                          help="like --download, and also download over files that fail their checks")
    datasets.add_argument("--no-progress", action="store_true", help="hide the download progress bars")
    datasets.set_defaults(run=_datasets)

    train = command("train", "train an iGNN on a data set or your own data",
                    "Writes into the run folder OUT: model.pt (a checkpoint, rewritten after every epoch), "
                    "run.json (the settings, which --resume compares), history.json (per-epoch losses) and "
                    "curves.png (the training curves); "
                    "downloads a missing real data set into the data root first. An existing, non-empty OUT is "
                    "refused unless --resume (continue or extend it: same settings, --epochs may grow) or "
                    "--overwrite (replace it whole once the new run has finished) is given.", _DATA_FORMATS)
    data_arguments(train, "the data to train on")
    # Unset options keep the recipe's values (dgl_iflow.recipe, measured in docs/reproduce.md).
    train.add_argument("--conv", choices=CONVS, default="l3", help="graph layer")
    train.add_argument("--blocks", type=_count(1), default=None, help="residual blocks (default: the recipe's, 8)")
    train.add_argument("--hidden", type=_count(1), nargs="+", default=None,
                       help="conv width, then node-wise hidden widths (default: the recipe's, 32 32)")
    train.add_argument("--sigma", type=_positive, default=None, help="latent std (default: the recipe's, 0.8409)")
    train.add_argument("--means", default=None,
                       help="latent class means to start from, ';' between classes, e.g. --means='2,-2;-2,2' "
                            "(default: the recipe's)")
    train.add_argument("--fixed-means", action="store_true", help="keep the latent means fixed (default: learned)")
    train.add_argument("--lipschitz", type=_fraction, default=None,
                       help="spectral normalization coefficient in (0, 1) (default: the recipe's, 0.97)")
    for name, what in _LEAVE_OUT.items():
        train.add_argument(f"--no-{name}", dest=name.replace("-", "_"), action="store_false", help=f"leave out {what}")
    train.add_argument("--epochs", type=_count(1), default=None,
                       help="default: the recipe's for the data set (traffic 60, solar 200, others 60); with "
                            "--resume, the run's own")
    train.add_argument("--batch-size", type=_count(1), default=None, help="default: the recipe's, 64")
    train.add_argument("--chunk-size", type=_count(1), default=None,
                       help="samples per forward and backward pass, gradients accumulated over the batch "
                            "(large graphs; default: the whole batch at once)")
    train.add_argument("--lr", type=_positive, default=1e-3, help="Adam's learning rate")
    train.add_argument("--seed", type=_count(0), default=0, help="seeds the initialization and the batches")
    train.add_argument("--patience", type=_count(1), default=None,
                       help="hold out --validation-fraction of the training split, stop after this many epochs "
                            "without a lower validation NLL and keep the best epoch; default: train every epoch")
    train.add_argument("--validation-fraction", type=_fraction, default=0.2,
                       help="with --patience: the share of the training split held out (seeded by --seed)")
    train.add_argument("--device", type=_device, default="cpu", help="where to train: cpu, cuda, cuda:1, ...")
    train.add_argument("--out", required=True, help="the run folder")
    again = train.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in OUT, or extend it with a larger --epochs; every other setting "
                            "must be the run's own")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run in OUT: the new run is built beside it and replaces the whole folder "
                            "only once finished, so a failure keeps the old run")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(run=_train)

    evaluate = command("evaluate", "the paper's protocol, accuracy, coverage and calibration on the test split",
                       "Prints the metrics as JSON: the paper's protocol, node accuracy, and under "
                       "'uncertainty' the coverage and latent radius of the model's own, split conformal and "
                       "adaptive conformal sets at levels 0.5 / 0.9 / 0.95, node-label sets, calibration error "
                       "and anomaly p-values beside logistic regression (the first --calibration-fraction of "
                       "the test rows calibrates, the rest is scored; docs/uncertainty.md). --out FILE.json "
                       "also writes them to FILE.json, with three figures beside it: FILE_samples.png "
                       "(generated vs test samples of the most frequent label vectors, with the edge of the "
                       "calibrated 90 % set), FILE_proba.png (predicted label probabilities per node) and "
                       "FILE_reliability.png (nominal against observed coverage; confidence against accuracy; false "
                       "alarms against alpha). A model of real-valued targets (train --target) gets generation "
                       "given every test row's targets beside a linear-mean Gaussian, RMSE beside ridge "
                       "regression, and its own, split and adaptive conformal intervals (docs/continuous.md); "
                       "its figures are FILE_sweep.png and FILE_predictions.png.")
    evaluate.add_argument("--checkpoint", required=True, help="model.pt written by `dgl-iflow train`")
    data_arguments(evaluate, "the data the model was trained on, as given to `train`")
    evaluate.add_argument("--top", type=_count(1), default=3,
                          help="number of most frequent label vectors to compare (class labels)")
    evaluate.add_argument("--seed", type=_count(0), default=0, help="seeds the generated samples and label sets")
    evaluate.add_argument("--calibration-fraction", type=_fraction, default=0.3,
                          help="share of the test rows, from the first, that calibrates the conformal sets")
    evaluate.add_argument("--out", default=None, help="write the metrics as JSON here, and the figures beside it")
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    evaluate.set_defaults(run=_evaluate)

    formats = "; ".join(f"{suffix}: {what}" for suffix, what in SAMPLE_FORMATS.items())
    sample = command("sample", "generate X | Y from a checkpoint",
                     f"Writes N samples to OUT, by its ending ({formats}). Samples are in the data's own "
                     f"units: the standardization of the data set the checkpoint was trained on is undone "
                     f"(--standardized keeps the model's units).")
    sample.add_argument("--checkpoint", required=True, help="model.pt written by `dgl-iflow train`")
    sample.add_argument("--labels", required=True,
                        help="label vector, one label per node, e.g. 0,1,0; for a model of real-valued targets "
                             "the targets, e.g. 0.5,-1.2,2 (in the units the model was trained on)")
    sample.add_argument("--n", type=_count(1), default=100, help="number of samples")
    sample.add_argument("--seed", type=_count(0), default=0, help="seeds the generated samples")
    sample.add_argument("--out", required=True, help=f"file ending in {', '.join(SAMPLE_FORMATS)}")
    sample.add_argument("--standardized", action="store_true",
                        help="write the samples in the model's standardized units, not the data's")
    sample.set_defaults(run=_sample)

    convert = command("convert-checkpoint", "rewrite an older training checkpoint in the safe format",
                      "Writes TARGET (which may be SOURCE); reading SOURCE runs no code from it.")
    convert.add_argument("source", help="checkpoint that `IGNN.load` asked to convert")
    convert.add_argument("target", help="where to write the converted checkpoint")
    convert.set_defaults(run=_convert_checkpoint)
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, like the errors, rather than two with a source line."""
    print(f"dgl-iflow: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from .checkpoints import CheckpointError
    from .data import DataFileError
    from .transforms import InversionError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as err:
        print(f"dgl-iflow: error: {err}", file=sys.stderr)
        return USAGE
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            args.run(args)
    except (ValueError, OSError, CheckpointError, DataFileError, InversionError) as err:
        if args.debug:
            raise
        print(f"dgl-iflow: error: {_one_line(err)}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("dgl-iflow: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (a bug, or a failure no check foresaw: still one line)
        if args.debug:
            raise
        print(f"dgl-iflow: error: unexpected {type(err).__name__}: {_one_line(err)} (--debug shows the "
              f"traceback; please report it)", file=sys.stderr)
        return FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
