"""Three moons end to end: generation, prediction and uncertainty sets after a short training."""
import pytest

from dgl_iflow.demos import three_moons


@pytest.mark.slow
def test_three_moons_quality(tmp_path):
    report = three_moons.run(tmp_path, epochs=100, num_blocks=10, progress=False)
    assert report.accuracy > 0.95
    # 400 held-out points: one binomial standard error of the coverage is 0.015.
    assert abs(report.coverage - 0.90) <= 0.03
    # Per class, below the permutation null's 1 - 0.01/3 quantile: a generator as good as
    # the data passes all three with probability >= 0.99.
    for mmd, null in zip(report.mmd, report.mmd_null):
        assert mmd < null, f"generated vs held-out MMD^2 {mmd:.4f} above the permutation null's quantile {null:.4f}"
    assert (tmp_path / "three_moons.png").stat().st_size > 10_000
