"""Progress reports: a tqdm bar on a terminal only; elsewhere a few plain lines, never redraws."""
from __future__ import annotations

import io
import sys

import pytest
import torch
from tqdm.std import tqdm

from dgl_iflow import IGNN, JKOConfig, JKOFlow, TrainConfig, fit, fit_jko, progress
from dgl_iflow.progress import LINE_INTERVAL_S, LineProgress, is_interactive, progress_bar
from graphs import path_graph, toy_data


class FakeTTY(io.StringIO):
    """A terminal, as far as anyone asking ``isatty`` can tell."""

    def isatty(self) -> bool:
        return True


class Clock:
    """A ``time.monotonic`` that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    return fake


def tiny_model() -> IGNN:
    torch.manual_seed(0)
    return IGNN(path_graph(), 2, 2, conv="l3", num_blocks=2, hidden_feats=(8, 8), sigma=0.3,
                means=[[0.0, -1.0], [0.0, 1.0]])


def tiny_fit(epochs: int = 30) -> None:
    x, y = toy_data(60)
    fit(tiny_model(), path_graph(), x, y, TrainConfig(epochs=epochs, batch_size=30, lr=5e-3, seed=3,
                                                      inversion_check_samples=0, progress=True))


def test_the_stream_decides_what_kind_of_bar():
    assert is_interactive(FakeTTY()) and not is_interactive(io.StringIO())
    closed = io.StringIO()
    closed.close()
    assert not is_interactive(closed)  # isatty raises on a closed stream
    assert isinstance(progress_bar(range(3), file=FakeTTY()), tqdm)
    assert isinstance(progress_bar(range(3), file=io.StringIO()), LineProgress)
    assert isinstance(progress_bar(range(3), file=FakeTTY(), disable=True), LineProgress)


def test_fit_into_a_file_writes_few_plain_lines(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)  # the bar looks stderr up when it is made
    tiny_fit(30)
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    # One line per LINE_INTERVAL_S at most, plus the last: a run of seconds writes one.
    assert 1 <= len(lines) <= 2, lines
    assert lines[-1].startswith("train: 30/30 epoch (100%)") and "loss=" in lines[-1]


def test_fit_on_a_terminal_draws_a_tqdm_bar(monkeypatch):
    stream = FakeTTY()
    monkeypatch.setattr(sys, "stderr", stream)
    tiny_fit(3)
    text = stream.getvalue()
    assert "\r" in text and "3/3" in text and "epoch" in text


def test_fit_without_progress_writes_nothing(monkeypatch):
    for stream in (io.StringIO(), FakeTTY()):
        monkeypatch.setattr(sys, "stderr", stream)
        x, y = toy_data(30)
        fit(tiny_model(), path_graph(), x, y, TrainConfig(epochs=2, batch_size=30, inversion_check_samples=0,
                                                          progress=False))
        assert stream.getvalue() == ""


def test_fit_jko_into_a_file_writes_a_line_per_pass(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (64, 3), generator=generator)
    x = 2.0 * y.unsqueeze(-1).float() - 1.0 + 0.5 * torch.randn(64, 3, 2, generator=generator)
    torch.manual_seed(1)
    flow = JKOFlow(path_graph(), 2, 2, conv="l3", hidden_feats=(8, 8))
    # 30 mini-batches per pass: tqdm redraws on each; the lines come once per pass.
    fit_jko(flow, path_graph(), x, y, JKOConfig(max_blocks=2, min_blocks=2, iterations=15, batch_size=16,
                                                reparametrize_rounds=1, refine_rounds=0, progress=True))
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split(":")[0] for line in lines] == ["JKO grow", "JKO reparametrize 1"], lines
    assert all("30/30 batch (100%)" in line and "loss=" in line for line in lines)


def test_lines_are_rate_limited(clock):
    stream = io.StringIO()
    bar = LineProgress(total=1000, desc="work", unit="step", file=stream, interval=10.0)
    for _ in range(1000):  # one step every 0.125 s: 125 s in all
        clock.now += 0.125
        bar.update(1)
    bar.set_postfix({"loss": "0.5"}, rate=3)
    bar.close()
    bar.close()  # idempotent
    lines = stream.getvalue().splitlines()
    assert len(lines) == 13  # one every 10 s, and the final line
    assert lines[0] == "work: 80/1000 step (8%), 10.0 s, eta 01:55"
    assert lines[-1] == "work: 1000/1000 step (100%), 02:05, loss=0.5, rate=3"


def test_iteration_counts_and_closes_after_break(clock):
    stream = io.StringIO()
    for item in progress_bar(range(10), desc="loop", unit="epoch", file=stream, initial=0):
        clock.now += 1.0
        if item == 4:
            break
    # The fifth item was broken off inside its step, so four are done, as tqdm counts them.
    assert stream.getvalue() == "loop: 4/10 epoch (40%), 5.0 s, eta 7.5 s\n"
    resumed = io.StringIO()
    for _ in progress_bar(range(6, 10), total=10, initial=6, desc="loop", unit="epoch", file=resumed):
        clock.now += 1.0
    assert resumed.getvalue() == "loop: 10/10 epoch (100%), 4.0 s\n"


def test_bytes_and_unknown_totals_and_disabled_bars(clock):
    stream = io.StringIO()
    with progress_bar(total=3 * 1024**2, unit="B", unit_scale=True, unit_divisor=1024, desc="a.csv",
                      file=stream, leave=False) as bar:
        bar.update(3 * 1024**2)
        bar.total -= 1  # tqdm's attribute may be lowered while running
    assert stream.getvalue().startswith("a.csv: 3.00MB/3.00MB (100%)")
    stream = io.StringIO()
    with progress_bar(desc="open", file=stream) as bar:
        bar.update(7)
    assert stream.getvalue() == "open: 7 it, 0.0 s\n"
    stream = io.StringIO()
    with progress_bar(total=5, file=stream, disable=True) as bar:
        clock.now += 2 * LINE_INTERVAL_S
        bar.update(5)
    assert stream.getvalue() == ""


def test_a_download_into_a_log_writes_one_line(tmp_path, monkeypatch):
    import hashlib

    from dgl_iflow.data.base import DataFile
    from dgl_iflow.data.download import download_file

    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 4096)  # 1 MiB, read in many chunks
    spec = DataFile("data.bin", source.stat().st_size, hashlib.sha256(source.read_bytes()).hexdigest(), None)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    download_file(source.as_uri(), tmp_path / "out", spec, progress=True)
    assert stream.getvalue().startswith("data.bin: 1.00MB/1.00MB (100%)")
    assert stream.getvalue().count("\n") == 1 and "\r" not in stream.getvalue()
