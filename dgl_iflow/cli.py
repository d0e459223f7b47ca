"""The ``dgl-iflow`` command: demos, and training, evaluating and sampling on bundled data sets."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def _parse_labels(text: str) -> torch.Tensor:
    try:
        return torch.tensor([int(value) for value in text.split(",")])
    except ValueError:
        raise SystemExit(f"--labels must be comma-separated integers such as 0,1,0; got {text!r}") from None


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
    from .data import list_datasets, verify_dataset

    for name in list_datasets():
        try:
            report = verify_dataset(name, args.data_root)
        except ValueError:
            print(f"{name:16} generated on the fly")
            continue
        status = "ok" if all(r.ok for r in report.values()) else "PROBLEM"
        print(f"{name:16} {status}")
        for file_name, file_report in report.items():
            print(f"    {file_name}: {file_report.status}")


def _train(args: argparse.Namespace) -> None:
    from .model import IGNN
    from .training import TrainConfig, fit

    dataset = _dataset(args)
    x_train, y_train = dataset.split("train")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "model.pt"
    model = IGNN(
        dataset.graph, dataset.num_features, dataset.num_classes, conv=args.conv, num_blocks=args.blocks,
        hidden_feats=tuple(args.hidden), sigma=args.sigma,
        means=None if args.means is None else [[float(v) for v in mean.split(",")] for mean in args.means.split(";")],
        lipschitz_coeff=args.lipschitz,
    )
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        checkpoint_path=str(checkpoint), progress=not args.no_progress,
    )
    history = fit(model, x_train, y_train, config, resume_from=checkpoint if args.resume else None)
    (out / "history.json").write_text(json.dumps(history.epochs, indent=2))
    print(f"wrote {checkpoint} and {out / 'history.json'}; last epoch: {history.last()}")


def _evaluate(args: argparse.Namespace) -> None:
    from . import metrics
    from .model import IGNN

    dataset = _dataset(args)
    model = IGNN.load(args.checkpoint).eval()
    x_test, y_test = dataset.split("test")
    graph = model.graph
    torch.manual_seed(args.seed)
    proba = model.predict_proba(graph, x_test.transpose(0, 1))
    result = metrics.paper_protocol(
        x_test, y_test, lambda labels, n: model.sample(graph, labels, n).transpose(0, 1), top=args.top,
    )
    report = dict(
        dataset=args.dataset, checkpoint=str(args.checkpoint),
        mmd=result["mmd"], energy=result["energy"],
        node_accuracy=metrics.node_accuracy(proba, y_test.transpose(0, 1)),
        node_log_loss=metrics.node_log_loss(proba, y_test.transpose(0, 1)),
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def _sample(args: argparse.Namespace) -> None:
    from .model import IGNN

    model = IGNN.load(args.checkpoint).eval()
    torch.manual_seed(args.seed)
    samples = model.sample(model.graph, _parse_labels(args.labels), args.n).transpose(0, 1)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgl-iflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run a demonstration")
    demo.add_argument("name", choices=["expressiveness", "chordal", "three-moons"],
                      help="expressiveness: 3-node graph; chordal: generated vs exact covariances on the chordal graph")
    demo.add_argument("--out", default=None, help="output folder (default runs/NAME)")
    demo.add_argument("--epochs", type=int, default=None, help="default: the demo's own")
    demo.add_argument("--blocks", type=int, default=None, help="default: the demo's own")
    demo.add_argument("--nodes", type=int, default=None, help="chordal only: number of nodes, a prime (default 503)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(run=_demo)

    datasets = commands.add_parser("datasets", help="list the data sets and verify the real files")
    datasets.add_argument("--data-root", default=None)
    datasets.set_defaults(run=_datasets)

    train = commands.add_parser("train", help="train an iGNN on a bundled data set")
    train.add_argument("--dataset", required=True)
    train.add_argument("--data-root", default=None)
    train.add_argument("--conv", choices=["l3", "cheb", "mlp"], default="l3")
    train.add_argument("--blocks", type=int, default=8)
    train.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    train.add_argument("--sigma", type=float, default=1.0)
    train.add_argument("--means", default=None,
                       help="latent class means, ';' between classes, e.g. --means='2,-2;-2,2'")
    train.add_argument("--lipschitz", type=float, default=None,
                       help="spectral normalization coefficient in (0, 1); default: none")
    train.add_argument("--epochs", type=int, default=50)
    train.add_argument("--batch-size", type=int, default=200)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, help="folder for model.pt and history.json")
    train.add_argument("--resume", action="store_true", help="continue from OUT/model.pt")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="the paper's protocol and node accuracy on the test split")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("--data-root", default=None)
    evaluate.add_argument("--top", type=int, default=3)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", default=None, help="write the metrics as JSON here")
    evaluate.set_defaults(run=_evaluate)

    sample = commands.add_parser("sample", help="generate X | Y from a checkpoint")
    sample.add_argument("--checkpoint", required=True)
    sample.add_argument("--labels", required=True, help="label vector, e.g. 0,1,0")
    sample.add_argument("--n", type=int, default=100)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", required=True, help=".pt tensor (n, V, d) or .png scatter plot")
    sample.set_defaults(run=_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
