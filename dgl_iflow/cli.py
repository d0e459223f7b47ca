"""The ``dgl-iflow`` command: demos, and training, evaluating and sampling on the library's data sets.

Every command reports a bad argument or bad input as one line ``dgl-iflow: error: ...`` on
stderr with a non-zero exit status (2 for usage, 1 for failures); ``--debug`` shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

#: Exit status of a command that failed on its input, files or data.
FAILED = 1
#: Exit status of a command line that does not parse (argparse's own).
USAGE = 2


class _UsageError(Exception):
    """Raised instead of argparse's exit, so that ``main`` prints one line and returns."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # noqa: D102  (argparse API)
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _parse_labels(text: str) -> torch.Tensor:
    try:
        return torch.tensor([int(value) for value in text.split(",")])
    except ValueError:
        raise ValueError(f"--labels must be comma-separated integers such as 0,1,0; got {text!r}") from None


def _parse_means(text: str) -> list[list[float]]:
    try:
        return [[float(value) for value in mean.split(",")] for mean in text.split(";")]
    except ValueError:
        raise ValueError(f"--means must be comma-separated numbers per class, ';' between classes, such as "
                         f"'2,-2;-2,2'; got {text!r}") from None


def _dataset(args: argparse.Namespace):
    from .data import load_dataset

    kwargs = {"root": args.data_root} if args.data_root and args.dataset in ("traffic", "solar") else {}
    return load_dataset(args.dataset, **kwargs)


def _demo(args: argparse.Namespace) -> None:
    from .demos import chordal, expressiveness, three_moons

    demo = {"expressiveness": expressiveness, "chordal": chordal, "three-moons": three_moons}[args.name]
    if args.nodes is not None and args.name != "chordal":
        raise SystemExit(f"--nodes applies to the chordal demo only, not to {args.name}")
    options = (("epochs", args.epochs), ("num_blocks", args.blocks), ("p", args.nodes))
    settings = {key: value for key, value in options if value is not None}
    demo.run(args.out or f"runs/{args.name}", seed=args.seed, progress=not args.no_progress, **settings)


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
    problems = False
    for name in args.names or list_datasets():
        if name not in real_datasets():
            print(f"{name:16} generated on the fly")
            continue
        if args.download or args.replace:
            reports = download_dataset(name, root, replace=args.replace, progress=not args.no_progress)
        else:
            reports = verify_dataset(name, root)
        ok = all(report.ok for report in reports.values())
        problems |= not ok
        folder = next(iter(reports.values())).path.parent
        print(f"{name:16} {'ok' if ok else 'PROBLEM':8} {folder}")
        for report in reports.values():
            print(f"    {report.name:40} {report.expected_size:>11,} bytes  {report.status:17} {report.url}")
    if problems:
        print("missing files are downloaded on first use, or now with `dgl-iflow datasets --download`; "
              "`--replace` also downloads over files that fail their checks (docs/datasets.md)")


def _train(args: argparse.Namespace) -> None:
    from .data import holdout
    from .recipe import recipe_config, recipe_model
    from .training import fit

    dataset = _dataset(args)
    x_train, y_train = dataset.split("train")
    validation = {}
    if args.patience is not None:
        if not 0.0 < args.validation_fraction < 1.0:  # named as the user typed it
            raise ValueError(f"--validation-fraction must lie in (0, 1); got {args.validation_fraction}")
        (x_train, y_train), (x_val, y_val) = holdout(x_train, y_train, args.validation_fraction, args.seed)
        validation = dict(x_val=x_val, y_val=y_val)
    out = Path(args.out)
    checkpoint = out / "model.pt"
    given = dict(num_blocks=args.blocks, hidden_feats=None if args.hidden is None else tuple(args.hidden),
                 sigma=args.sigma, means=None if args.means is None else _parse_means(args.means),
                 lipschitz_coeff=args.lipschitz)
    changes = {key: value for key, value in given.items() if value is not None}
    changes.update({key: False for key in ("graph_mean", "graph_mean_linear", "node_affine", "label_context")
                    if not getattr(args, key)})
    if args.fixed_means:
        changes.update(trainable_means=False, min_separation=None)
    model = recipe_model(dataset.graph, dataset.num_features, dataset.num_classes, conv=args.conv, **changes)
    config = recipe_config(
        args.dataset, chunk_size=args.chunk_size, lr=args.lr, seed=args.seed, patience=args.patience,
        label_vector_gaussians=args.label_vector_gaussians,
        checkpoint_path=str(checkpoint), progress=not args.no_progress,
        **({} if args.epochs is None else dict(epochs=args.epochs)),
        **({} if args.batch_size is None else dict(batch_size=args.batch_size)),
    )
    out.mkdir(parents=True, exist_ok=True)  # only once the arguments have proved valid
    history = fit(model, dataset.graph, x_train, y_train, config,
                  resume_from=checkpoint if args.resume else None, **validation)
    (out / "history.json").write_text(json.dumps(history.epochs, indent=2))
    kept = "" if history.best_epoch is None or args.patience is None else f"; kept epoch {history.best_epoch}"
    print(f"wrote {checkpoint} and {out / 'history.json'}; last epoch: {history.last()}{kept}")


def _evaluate(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from . import metrics
    from .models import IGNN

    dataset = _dataset(args)
    model = IGNN.load(args.checkpoint).eval()
    x_test, y_test = dataset.split("test")
    graph = dataset.graph
    torch.manual_seed(args.seed)
    proba = model.predict_proba(graph, x_test)
    generated: dict[tuple[int, ...], torch.Tensor] = {}  # kept for the figures
    with tqdm(total=args.top, desc="generate per label vector", unit="label vector", disable=args.no_progress) as bar:
        def generate(labels: torch.Tensor, n: int) -> torch.Tensor:
            samples = generated[tuple(labels.tolist())] = model.sample(graph, labels, n)
            bar.update(1)
            return samples

        result = metrics.paper_protocol(x_test, y_test, generate, top=args.top)
    report = dict(
        dataset=args.dataset, checkpoint=str(args.checkpoint),
        mmd=result["mmd"], energy=result["energy"],
        node_accuracy=metrics.node_accuracy(proba, y_test),
        node_log_loss=metrics.node_log_loss(proba, y_test),
    )
    if args.out:
        report["figures"] = _evaluation_figures(dataset, x_test, y_test, generated, proba, Path(args.out))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def _evaluation_figures(dataset, x_test, y_test, generated, proba, out: Path) -> list[str]:
    """Generated-vs-real and predicted-probability PNGs beside ``out``, named after its stem."""
    from . import plots

    real = {key: x_test[(y_test == torch.tensor(key)).all(dim=1)] for key in generated}
    stem = out.with_suffix("")
    paths = [plots.generated_vs_real(real, generated, f"{stem}_samples.png", feature_names=dataset.feature_names,
                                     title=f"{dataset.name}: test rows vs generated"),
             plots.node_probabilities(proba, y_test, f"{stem}_proba.png",
                                      node_names=dataset.node_names)]
    return [str(path) for path in paths]


def _sample(args: argparse.Namespace) -> None:
    from .models import IGNN

    labels = _parse_labels(args.labels)
    model = IGNN.load(args.checkpoint).eval()
    if labels.shape != (model.num_nodes,) or int(labels.min()) < 0 or int(labels.max()) >= model.num_classes:
        raise ValueError(f"--labels needs {model.num_nodes} labels (one per node of the model's graph) in "
                         f"[0, {model.num_classes}); got {args.labels}")
    torch.manual_seed(args.seed)
    samples = model.sample(model.graph, labels, args.n)
    out = Path(args.out)
    if out.suffix == ".png":
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(5, 5))
        for node in range(samples.shape[1]):
            axis.scatter(*samples[:, node, :2].T, s=5, label=f"node {node}")
        axis.set_title(f"generated X | Y = {args.labels}")
        if samples.shape[1] <= 10:
            axis.legend(fontsize=7)
        figure.savefig(out, dpi=110)
    else:
        torch.save(samples, out)
    print(f"wrote {args.n} samples of shape {tuple(samples.shape[1:])} to {out}")


def _convert_checkpoint(args: argparse.Namespace) -> None:
    from .checkpoints import convert_checkpoint

    convert_checkpoint(args.source, args.target)
    print(f"wrote {args.target}, which loads without running code from the file")


def build_parser() -> argparse.ArgumentParser:
    # --debug works before or after the command; the command's copy only overrides when given.
    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the Python traceback of an error instead of one line")
    parser = _Parser(prog="dgl-iflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, writes: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=f"{help[0].upper()}{help[1:]}. {writes}",
                                   parents=[debug])

    def data_root(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--data-root", default=None,
                         help="root of the real data sets (default: $DGL_IFLOW_DATA, else ~/.dgl_iflow/data); "
                              "missing files are downloaded into it")

    demo = command("demo", "run a demonstration",
                   "Writes its figures and JSON results into --out (default runs/NAME) and prints a summary.")
    demo.add_argument("name", choices=["expressiveness", "chordal", "three-moons"],
                      help="expressiveness: 3-node graph; chordal: generated vs exact covariances on the chordal graph")
    demo.add_argument("--out", default=None, help="output folder (default runs/NAME)")
    demo.add_argument("--epochs", type=int, default=None, help="default: the demo's own")
    demo.add_argument("--blocks", type=int, default=None, help="default: the demo's own")
    demo.add_argument("--nodes", type=int, default=None, help="chordal only: number of nodes, a prime (default 503)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    demo.set_defaults(run=_demo)

    datasets = command("datasets", "list the data sets, check the real files, download them",
                       "Lists every data set and, for those read from files, each file's size, status and "
                       "source. Writes nothing unless --download or --replace is given; those write the "
                       "downloaded files into DATA_ROOT/<data set>/.")
    datasets.add_argument("names", nargs="*", help="data sets to show (default: all)")
    data_root(datasets)
    datasets.add_argument("--download", action="store_true",
                          help="download the missing files, checked against their size and sha256")
    datasets.add_argument("--replace", action="store_true",
                          help="like --download, and also download over files that fail their checks")
    datasets.add_argument("--no-progress", action="store_true", help="hide the download progress bars")
    datasets.set_defaults(run=_datasets)

    train = command("train", "train an iGNN on a data set",
                    "Writes OUT/model.pt (a checkpoint, rewritten after every epoch) and OUT/history.json "
                    "(per-epoch losses); downloads a missing real data set into the data root first.")
    train.add_argument("--dataset", required=True, help="a name from `dgl-iflow datasets`")
    data_root(train)
    # Unset options keep the recipe's values (dgl_iflow.recipe, measured in docs/reproduce.md).
    train.add_argument("--conv", choices=["l3", "cheb", "mlp"], default="l3", help="graph layer (default l3)")
    train.add_argument("--blocks", type=int, default=None, help="residual blocks (default 8)")
    train.add_argument("--hidden", type=int, nargs="+", default=None,
                       help="conv width, then node-wise hidden widths (default: the recipe's, 32 32)")
    train.add_argument("--sigma", type=float, default=None, help="latent std (default: the recipe's, 0.8409)")
    train.add_argument("--means", default=None,
                       help="latent class means to start from, ';' between classes, e.g. --means='2,-2;-2,2' "
                            "(default: the recipe's)")
    train.add_argument("--fixed-means", action="store_true", help="keep the latent means fixed (default: learned)")
    train.add_argument("--lipschitz", type=float, default=None,
                       help="spectral normalization coefficient in (0, 1) (default: the recipe's, 0.97)")
    for name, what in (("graph-mean", "the graph-mean operator of the convolutions"),
                       ("graph-mean-linear", "the graph-mean linear layer at the data end"),
                       ("node-affine", "the per-node affine layer at the latent end"),
                       ("label-context", "the label context (latent means shifted by the label vector, "
                                         "prediction by Bayes over the training label vectors)"),
                       ("label-vector-gaussians", "the joint latent Gaussian per training label vector fitted "
                                                  "once trained (the node law for every label vector)")):
        train.add_argument(f"--no-{name}", dest=name.replace("-", "_"), action="store_false", help=f"leave out {what}")
    train.add_argument("--epochs", type=int, default=None,
                       help="default: the recipe's for the data set (traffic 60, solar 200, others 60)")
    train.add_argument("--batch-size", type=int, default=None, help="default: the recipe's, 64")
    train.add_argument("--chunk-size", type=int, default=None,
                       help="samples per forward and backward pass, gradients accumulated over the batch "
                            "(large graphs; default: the whole batch at once)")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--patience", type=int, default=None,
                       help="hold out --validation-fraction of the training split, stop after this many epochs "
                            "without a lower validation NLL and keep the best epoch; default: train every epoch")
    train.add_argument("--validation-fraction", type=float, default=0.2,
                       help="with --patience: the share of the training split held out (seeded by --seed)")
    train.add_argument("--out", required=True, help="folder for model.pt and history.json")
    train.add_argument("--resume", action="store_true", help="continue from OUT/model.pt")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(run=_train)

    evaluate = command("evaluate", "the paper's protocol and node accuracy on the test split",
                       "Prints the metrics as JSON; --out also writes them to that file.")
    evaluate.add_argument("--checkpoint", required=True, help="model.pt written by `dgl-iflow train`")
    evaluate.add_argument("--dataset", required=True, help="the data set the model was trained on")
    data_root(evaluate)
    evaluate.add_argument("--top", type=int, default=3, help="number of most frequent label vectors to compare")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", default=None, help="write the metrics as JSON here")
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    evaluate.set_defaults(run=_evaluate)

    sample = command("sample", "generate X | Y from a checkpoint",
                     "Writes N samples to OUT: a .pt tensor (n, V, d), or a .png scatter plot of the first "
                     "two features per node.")
    sample.add_argument("--checkpoint", required=True, help="model.pt written by `dgl-iflow train`")
    sample.add_argument("--labels", required=True, help="label vector, one label per node, e.g. 0,1,0")
    sample.add_argument("--n", type=int, default=100)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", required=True, help=".pt tensor (n, V, d) or .png scatter plot")
    sample.set_defaults(run=_sample)

    convert = command("convert-checkpoint", "rewrite an older training checkpoint in the safe format",
                      "Writes TARGET (which may be SOURCE); reading SOURCE runs no code from it.")
    convert.add_argument("source", help="checkpoint that `IGNN.load` asked to convert")
    convert.add_argument("target", help="where to write the converted checkpoint")
    convert.set_defaults(run=_convert_checkpoint)
    return parser


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
        args.run(args)
    except (ValueError, OSError, CheckpointError, DataFileError, InversionError) as err:
        if args.debug:
            raise
        print(f"dgl-iflow: error: {' '.join(str(err).split())}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("dgl-iflow: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
