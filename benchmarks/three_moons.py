"""Three moons, longer and better than the CI test: `python benchmarks/three_moons.py [--epochs N]`."""
import argparse

from dgl_iflow.demos import three_moons

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--epochs", type=int, default=300)
parser.add_argument("--blocks", type=int, default=12)
parser.add_argument("--out", default="runs/three_moons_long")
args = parser.parse_args()
three_moons.run(args.out, epochs=args.epochs, num_blocks=args.blocks)
