"""Solar ramp events from NSRDB-style irradiance files (default: nine Bay Area sites, 2018).

Files live in ``<root>/solar_bay_area/`` (see ``datasets/solar.md``). Per location, DHI is
averaged over 12-hour windows (00-12 and 12-24 local time); a window is a ramp event (1) when
its average jumps or drops sharply against the previous window's, or both are low; or, with
``target="next_dhi"``, real-valued targets: every location's standardized DHI of the next window.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .base import (DataFile, DataFileError, GraphDataset, require_exists, require_file,
                   resolve_root, undirected_graph)
from .download import fetch_files

FOLDER = "solar_bay_area"
#: The EnbPI repository at the commit the files were taken from.
SOURCE = ("https://raw.githubusercontent.com/hamrel-cxu/EnbPI/"
          "7937e7303656a2bfbfeaae9d355d6a817cdce975/Data")


def _published(name: str, size: int, sha256: str) -> DataFile:
    return DataFile(name, size, sha256, f"{SOURCE}/{name}")


FILES = (
    _published("Fremont_data.csv", 729299,
               "f18bec298c27c3bce34cc845d45246f42593f26452b64e9864df761ae69cdc80"),
    _published("Milpitas_data.csv", 730308,
               "c6190ecd1e1808d8a67077c614337fb8a0a3e1db29c30ebb29a85629fe6db29d"),
    _published("Mountain_View_data.csv", 722654,
               "2e666434226b0b06bf578e4e30503aa7fe63480bc8a91ee363ebc404116bb19b"),
    _published("North_San_Jose_data.csv", 730231,
               "5b22eff9d843c5e63c571a3f525d172c6ea6b6864ee19ca0247d1466addf643b"),
    _published("Palo_Alto_data.csv", 722734,
               "ee27bc08d39a3e0dab17be5a95f97001156e77eeb10ee0ef4285376d7c45caee"),
    _published("Redwood_City_data.csv", 723403,
               "00bc1afaecf2d13d2351ddcc37599242fedcc3c3f4f6567f149a268c4154b9bf"),
    _published("San_Mateo_data.csv", 718802,
               "edb8b58f094c861a4ce82a27da395e42f98a17268d8158d863b21e6f1b603e99"),
    _published("Santa_Clara_data.csv", 728812,
               "fbbae201fddc1c6ed7d8a0516c687f0b74cbcda6423cb3c724aba19f2a846418"),
    _published("Sunnyvale_data.csv", 723035,
               "dd330b1fb9e136df26e881731fec74a105e684c33085801b377d1528bb487fbb"),
)

#: Columns every NSRDB-style file needs; ``Minute`` and a location column are optional.
REQUIRED_COLUMNS = ("Year", "Month", "Day", "Hour", "DHI")
LOCATION_COLUMNS = ("Location", "location")
WINDOW_HOURS = 12
#: Chronological split: the first floor(3 W / 4) of the W windows are the training period.
TRAIN_FRACTION = 0.75
#: Week-block split: blocks of 14 consecutive samples (one week of half-days); of every 4
#: consecutive blocks the first 3 are training blocks and the 4th a test block.
BLOCK_SAMPLES = 14
BLOCKS_PER_CYCLE = 4
SPLIT_KINDS = ("week_blocks", "chronological")
FEATURE_NAMES = ["dhi_t", "dhi_t-1"]
#: Ramp rule thresholds: relative rise above, relative fall below, and the low-light levels.
RISE, FALL, LOW_NOW, LOW_BEFORE = 1.0, -0.5, 40.0, 35.0
#: Lines searched for the header row; raw NSRDB downloads put two metadata lines above it.
HEADER_SEARCH_LINES = 5
#: What ``solar(target=...)`` labels the nodes with: the ramp events, or the next window's DHI.
TARGETS = ("ramp", "next_dhi")


def ramp_labels(dhi: np.ndarray) -> np.ndarray:
    """Ramp-event labels of consecutive window averages.

    Label 1 when (x_t - x_{t-1}) / x_{t-1} > 1, or < -0.5, or (x_t < 40 and x_{t-1} < 35).
    When x_{t-1} = 0 the label is 1, as the paper's float division gave (inf > 1, or nan plus
    the low-light clause): the division by zero is replaced by a division by 1, which keeps
    that outcome since x_t >= 40 then still counts as a rise and x_t < 40 is low light.

    Parameters
    ----------
    dhi : np.ndarray
        Shape (W, L), window averages of W consecutive windows at L locations.

    Returns
    -------
    np.ndarray
        Shape (W - 1, L), int64 labels of windows 1 .. W-1 (window 0 has no predecessor).
    """
    now, before = dhi[1:], dhi[:-1]
    change = (now - before) / np.where(before == 0, 1.0, before)
    ramp = (change > RISE) | (change < FALL) | ((now < LOW_NOW) & (before < LOW_BEFORE))
    return ramp.astype(np.int64)


def _read_csv(path: Path) -> pd.DataFrame:
    """Read one NSRDB-style CSV, skipping metadata lines above the header row."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            head = [handle.readline() for _ in range(HEADER_SEARCH_LINES)]
        header_line = next((i for i, line in enumerate(head)
                            if {"Year", "DHI"} <= {field.strip() for field in line.split(",")}), 0)
        frame = pd.read_csv(path, skiprows=header_line)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataFileError(f"data file {path.name} in folder {path.parent} could not be read "
                            f"as CSV: {err!r}") from err
    frame.columns = [str(col).strip() for col in frame.columns]
    missing = [col for col in REQUIRED_COLUMNS if col not in frame.columns]
    if missing:
        raise DataFileError(f"data file {path.name} in folder {path.parent} lacks columns "
                            f"{missing}; expected columns {list(REQUIRED_COLUMNS)} (optional: "
                            f"Minute, {' or '.join(LOCATION_COLUMNS)})")
    numeric = frame[list(REQUIRED_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    if numeric.isna().any().any() or not np.isfinite(numeric.to_numpy(np.float64)).all():
        raise DataFileError(f"data file {path.name} in folder {path.parent} has missing or "
                            f"non-numeric values in {list(REQUIRED_COLUMNS)}")
    frame[list(REQUIRED_COLUMNS)] = numeric
    return frame


def _location_name(path: Path) -> str:
    """``North_San_Jose_data.csv`` -> ``North San Jose``."""
    return path.stem.removesuffix("_data").replace("_", " ")


def _window_averages(frame: pd.DataFrame, path: Path, name: str) -> pd.Series:
    """Mean DHI per 12-hour window, indexed by window start; every window must be complete."""
    try:
        day = pd.to_datetime(frame[["Year", "Month", "Day"]].astype(int).rename(columns=str.lower))
    except ValueError as err:
        raise DataFileError(f"data file {path.name} in folder {path.parent}: location {name!r} "
                            f"has invalid dates in Year/Month/Day: {err}") from err
    if not frame["Hour"].between(0, 23).all():
        raise DataFileError(f"data file {path.name} in folder {path.parent}: location {name!r} "
                            f"has Hour values outside 0-23")
    start = day + pd.to_timedelta((frame["Hour"] // WINDOW_HOURS) * WINDOW_HOURS, unit="h")
    grouped = frame["DHI"].groupby(start.to_numpy())
    counts = grouped.size()
    if counts.nunique() != 1:
        raise DataFileError(f"data file {path.name} in folder {path.parent}: location {name!r} "
                            f"has 12-hour windows with different numbers of rows "
                            f"({sorted(counts.unique().tolist())}); expected complete windows "
                            f"at a fixed time step")
    return grouped.mean()


def _locations(paths: list[Path]) -> dict[str, pd.Series]:
    """Window averages per location name, in file order then order of appearance."""
    series: dict[str, pd.Series] = {}
    for path in paths:
        frame = _read_csv(path)
        column = next((col for col in LOCATION_COLUMNS if col in frame.columns), None)
        if column is None:
            groups = [(_location_name(path), frame)]
        else:
            groups = [(str(name), part) for name, part in frame.groupby(column, sort=False)]
        for name, part in groups:
            if name in series:
                raise DataFileError(f"location {name!r} appears twice (again in data file "
                                    f"{path.name} in folder {path.parent})")
            series[name] = _window_averages(part, path, name)
    return series


def agreement_pairs(train_labels: np.ndarray, k: int) -> list[tuple[int, int]]:
    """Each location with the k - 1 others whose training labels agree with its own most often.

    Ties go to the lower node id, so the graph does not depend on sort stability.

    Parameters
    ----------
    train_labels : np.ndarray
        Shape (n, L), training labels.
    k : int
        Neighbourhood size including the location itself.

    Returns
    -------
    list of (int, int)
        Undirected pairs (self-pairs excluded).
    """
    agreement = (train_labels[:, :, None] == train_labels[:, None, :]).sum(axis=0)
    pairs = []
    for node, row in enumerate(agreement):
        others = [other for other in np.lexsort((np.arange(len(row)), -row)) if other != node]
        pairs.extend((node, int(other)) for other in others[: k - 1])
    return pairs


def split_samples(num_samples: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Training and test sample indices of the ``"week_blocks"`` or ``"chronological"`` split.

    Sample i is window i + 1. ``"week_blocks"``: sample i lies in block i // 14 and is a test
    sample when that block is the 4th of its cycle of 4 (block % 4 == 3), so training and test
    weeks alternate 3:1 through the year and both parts see every season. ``"chronological"``:
    the samples whose window lies in the first floor(3 W / 4) of the W = num_samples + 1
    windows are training samples, the rest test samples.

    Parameters
    ----------
    num_samples : int
        Number of samples N.
    split : str
        One of ``SPLIT_KINDS``.

    Returns
    -------
    train_idx, test_idx : np.ndarray
        Sorted int64 indices into N.
    """
    if split not in SPLIT_KINDS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_KINDS)}")
    samples = np.arange(num_samples)
    if split == "week_blocks":
        is_test = (samples // BLOCK_SAMPLES) % BLOCKS_PER_CYCLE == BLOCKS_PER_CYCLE - 1
    else:
        is_test = samples + 1 >= int((num_samples + 1) * TRAIN_FRACTION)
    return samples[~is_test], samples[is_test]


def _block_ranges(index: pd.Index, samples: np.ndarray) -> list[list[str]]:
    """First and last window start of each run of consecutive samples (sample i = window i + 1)."""
    breaks = np.flatnonzero(np.diff(samples) > 1) + 1
    return [[str(index[run[0] + 1]), str(index[run[-1] + 1])]
            for run in np.split(samples, breaks)]


def solar(root: str | os.PathLike | None = None, verify: bool = True, k: int = 3,
          files: Sequence[str | os.PathLike] | None = None, download: bool = True,
          split: str = "week_blocks", target: str = "ramp") -> GraphDataset:
    """Load solar ramp-event data from NSRDB-style CSV files.

    Each location's DHI is averaged over 12-hour windows; window t gets features
    [x_t, x_{t-1}] and its ramp label (see ``ramp_labels``), so the first window only serves
    as a predecessor. The samples are split by ``split_samples``: by default in week blocks
    (14 consecutive half-days; of every 4 blocks, 3 train and 1 test), or chronologically
    (first 3/4 of the windows train, the rest test). The lag feature x_{t-1} of the first
    sample of a block is the last window of the block before, which belongs to the other part:
    kept, since it is an observed past value, not a label; no sample is dropped. Features are
    standardized per location with the mean and standard deviation of the training part's
    windows only (for week blocks: the current windows x_t of the training samples; for the
    chronological split: all windows of the training period, window 0 included). The graph
    links each location to the k - 1 others (k counting itself) whose training labels agree
    with its own most often, made symmetric, with a self-loop on every node.

    Files may be hourly or half-hourly, one per location (named ``<Location>_data.csv``) or
    several locations stacked with a ``Location``/``location`` column.

    Parameters
    ----------
    root : str or PathLike, optional
        Data root holding ``solar_bay_area/``; default ``$DGL_IFLOW_DATA``, else
        ``~/.dgl_iflow/data``.
    verify : bool
        Check the published sizes and sha256 checksums (default files only).
    k : int
        Neighbourhood size per location, itself included.
    files : sequence of paths, optional
        CSV files to read instead of the nine published ones; relative paths are taken inside
        ``<root>/solar_bay_area``. They have no published checksum, so only their format is
        checked.
    download : bool
        Download missing published files from :data:`SOURCE` (or ``$DGL_IFLOW_DATA_URL``)
        into ``<root>/solar_bay_area/`` first; downloads are checked before they are kept.
        Has no effect with ``files``.
    split : {"week_blocks", "chronological"}
        How samples are split into training and test parts.
    target : {"ramp", "next_dhi"}
        The node labels: the ramp events of window t, or real-valued targets, every location's
        DHI of window t + 1 standardized as the features are (a half-day-ahead forecast). A
        sample whose next window is the other part's sample, or absent, is dropped, so no test
        target is a training feature; the features, split and graph (from the training ramp
        labels) are those of ``"ramp"``.

    Returns
    -------
    GraphDataset
        x (N, L, 2), y (N, L) in {0, 1} (``"next_dhi"``: float targets, ``num_classes`` None);
        node names are location names.

    Raises
    ------
    DataFileError
        If a file is missing (and cannot be downloaded), fails its checksum or is not in the
        expected format.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    data_root = resolve_root(root)
    folder = data_root.path / FOLDER
    if files is None:
        if download:
            fetch_files(FOLDER, FILES, data_root)
        paths = [require_file(folder, spec, data_root, verify) for spec in FILES]
        sources = {spec.name: {"size": spec.size, "sha256": spec.sha256} for spec in FILES}
    else:
        paths = [require_exists(folder / Path(f), data_root) for f in files]
        sources = {str(path): {"size": path.stat().st_size} for path in paths}
    series = _locations(paths)
    names = list(series)
    if len(names) < k:
        raise ValueError(f"k = {k} neighbours need at least {k} locations, found {len(names)}")
    averages = pd.concat(series.values(), axis=1, keys=names, join="outer")
    if averages.isna().any().any():
        raise DataFileError(f"locations {names} in folder {folder} do not cover the same "
                            f"12-hour windows; expected files for the same period")
    dhi = averages.to_numpy(np.float64)
    num_windows = len(dhi)
    train_idx, test_idx = split_samples(num_windows - 1, split)
    if len(train_idx) < 2 or len(test_idx) == 0:
        raise DataFileError(f"only {num_windows} 12-hour windows in folder {folder}; too few "
                            f"to split ({split!r} split: {len(train_idx)} training and "
                            f"{len(test_idx)} test samples)")
    labels = ramp_labels(dhi)
    if split == "week_blocks":
        fit_windows = dhi[train_idx + 1]
        split_info = {"kind": split, "block_samples": BLOCK_SAMPLES,
                      "blocks_per_cycle": BLOCKS_PER_CYCLE, "test_block": "block % 4 == 3",
                      "test_weeks": _block_ranges(averages.index, test_idx)}
    else:
        fit_windows = dhi[: train_idx[-1] + 2]  # windows 0 .. the last training sample's
        split_info = {"kind": split, "train_fraction": TRAIN_FRACTION,
                      "train_windows": [str(averages.index[1]),
                                        str(averages.index[train_idx[-1] + 1])],
                      "test_windows": [str(averages.index[test_idx[0] + 1]),
                                       str(averages.index[-1])]}
    mean = fit_windows.mean(axis=0)
    std = fit_windows.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant location stays centred rather than dividing by 0
    scaled = (dhi - mean) / std
    x = np.stack([scaled[1:], scaled[:-1]], axis=-1)
    pairs = agreement_pairs(labels[train_idx], k)
    y = labels
    if target == "next_dhi":
        # Sample i is window i + 1; its target, window i + 2, is sample i + 1's x_t: keep i only
        # where sample i + 1 exists in the same part.
        in_test = np.zeros(len(x), dtype=bool)
        in_test[test_idx] = True
        kept = np.nonzero(in_test[:-1] == in_test[1:])[0]
        x, y = x[kept], scaled[kept + 2]
        train_idx, test_idx = np.nonzero(~in_test[kept])[0], np.nonzero(in_test[kept])[0]
    info = {
        "root": str(data_root.path), "root_source": data_root.source, "verified": verify,
        "files": sources, "k": k, "window_hours": WINDOW_HOURS, "windows": num_windows,
        "split": split_info,
        "scaler": {"fit_on": f"windows of the training part ({split} split), per location, "
                             f"both lags", "ddof": 0, "mean": mean.tolist(), "std": std.tolist()},
        "ramp_rule": f"change > {RISE} or change < {FALL} or (x_t < {LOW_NOW} and "
                     f"x_t-1 < {LOW_BEFORE}); x_t-1 = 0 -> 1",
        "graph_pairs": sorted(set(tuple(sorted(pair)) for pair in pairs)),
        "target": target,
    }
    return GraphDataset(
        name="solar", graph=undirected_graph(pairs, len(names), self_loops=True),
        x=torch.from_numpy(x), y=torch.from_numpy(y), train_idx=torch.from_numpy(train_idx),
        test_idx=torch.from_numpy(test_idx), num_classes=None if target == "next_dhi" else 2, node_names=names,
        feature_names=list(FEATURE_NAMES), info=info, raw_path=folder)
