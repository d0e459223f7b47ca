"""Hourly traffic flow at 15 sensors (2020) with per-sensor anomaly labels.

Files (pickled pandas objects, see ``datasets/traffic.md``) live in ``<root>/traffic/``.
A sample is one hour t: node features [flow_t, flow_{t-1}] per sensor, labels 1 where the
sensor's flow was flagged above its upper quantile, else 0; or, with ``target="next_flow"``,
real-valued targets: every sensor's standardized flow of hour t + 1.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .base import (DataFile, DataFileError, GraphDataset, sorted_graph, require_file,
                   resolve_root)
from .download import fetch_files

FOLDER = "traffic"
#: The paper's repository at its last commit holding the files (the next one deletes them).
SOURCE = ("https://raw.githubusercontent.com/hamrel-cxu/Invertible-Graph-Neural-Network-iGNN/"
          "8955033b3011400a19db0e8dd2d06b33a7d18b8a/Data")


def _published(name: str, size: int, sha256: str) -> DataFile:
    return DataFile(name, size, sha256, f"{SOURCE}/{name}")


TRAIN_FLOW = _published("flow_frame_train_0.7_no_drop_data.p", 787481,
                        "ad1cb13703d454e45eac24c12a779c29218913a51b7463728b8b92fe9599af88")
TEST_FLOW = _published("flow_frame_test_0.7_no_drop_data.p", 339097,
                       "5611f5e51f96d4d628f966d8313c102bfc694a942c39cab7b4796192607d6131")
LABELS = _published("true_anomalies.p", 1125410,
                    "a837127d323354f085cf1ba0386128a2b26dbf72366a71811a9092d6cb46234f")
NEIGHBORS = _published("sensor_neighbors.p", 2478,
                       "eb34a0b2a4f26e24b07bc9f10161a7ea90258bf34557bf7fb576665c6ad173bc")
FILES = (TRAIN_FLOW, TEST_FLOW, LABELS, NEIGHBORS)

#: Each sensor aggregates itself and its 2 nearest sensors.
NEIGHBORHOOD_SIZE = 3
FEATURE_NAMES = ["flow_t", "flow_t-1"]
#: Raw label values: 0 normal, 1 above the upper quantile, 2 below the lower one.
RAW_LABELS = (0, 1, 2)
#: What ``traffic(target=...)`` labels the nodes with: the anomaly classes, or the next hour's flow.
TARGETS = ("anomaly", "next_flow")


def _read_pickle(path: Path) -> Any:
    try:
        return pd.read_pickle(path)
    except Exception as err:  # unpickling fails with many exception types on a bad file
        raise DataFileError(f"data file {path.name} in folder {path.parent} could not be read "
                            f"as a pickled pandas object: {err!r}") from err


def _frame(path: Path, columns: list | None) -> pd.DataFrame:
    """Read a pickled DataFrame of finite numbers, with ``columns`` if given."""
    frame = _read_pickle(path)
    if not isinstance(frame, pd.DataFrame):
        raise DataFileError(f"data file {path.name} in folder {path.parent} holds a "
                            f"{type(frame).__name__}; expected a pandas DataFrame")
    if columns is not None and list(frame.columns) != columns:
        raise DataFileError(f"data file {path.name} in folder {path.parent} has columns "
                            f"{list(frame.columns)}; expected the sensor columns {columns}")
    try:
        values = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as err:
        raise DataFileError(f"data file {path.name} in folder {path.parent} has non-numeric "
                            f"values: {err!r}") from err
    if not np.isfinite(values).all():
        raise DataFileError(f"data file {path.name} in folder {path.parent} has missing or "
                            f"non-finite values; expected finite numbers")
    return frame


def _neighbor_edges(path: Path, sensors: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges neighbour -> sensor for each sensor's own id and its nearest other sensors."""
    neighbors = _read_pickle(path)
    missing = [s for s in sensors if not isinstance(neighbors, dict) or s not in neighbors]
    if missing:
        raise DataFileError(f"data file {path.name} in folder {path.parent} must be a dict "
                            f"from every sensor id to its neighbours sorted by distance; "
                            f"no entry for sensors {missing}")
    node_of = {sensor: node for node, sensor in enumerate(sensors)}
    src, dst = [], []
    for node, sensor in enumerate(sensors):
        # Neighbour lists may name sensors outside this data set; skip those, as the paper did.
        others = [node_of[n] for n in neighbors[sensor] if n in node_of and n != sensor]
        chosen = [node] + others[: NEIGHBORHOOD_SIZE - 1]
        if len(chosen) < NEIGHBORHOOD_SIZE:
            raise DataFileError(f"data file {path.name} in folder {path.parent} lists fewer "
                                f"than {NEIGHBORHOOD_SIZE - 1} other sensors for {sensor}")
        src.extend(chosen)
        dst.extend([node] * NEIGHBORHOOD_SIZE)
    return torch.tensor(src), torch.tensor(dst)


def traffic(root: str | os.PathLike | None = None, verify: bool = True,
            subsample: bool = True, download: bool = True, target: str = "anomaly") -> GraphDataset:
    """Load the 15-sensor traffic anomaly data.

    Train and test frames are consecutive hours; sample t has features
    [flow_t, flow_{t-1}] per sensor (the previous row of the concatenated series) and labels
    from ``true_anomalies.p`` with value 2 (below the lower quantile) mapped to 0.

    With ``subsample=True`` (the paper's split) the training part uses only the last
    floor(T_train / 2) training hours, and samples whose previous hour falls outside them are
    dropped (3070 samples); the test part is the first floor(T_test / 2) test hours (1320
    samples), the first one taking its previous hour from the last training hour. With
    ``subsample=False`` all training hours but the first (6142) and all test hours (2640) are
    used. Features are standardized per sensor with the mean and standard deviation of the
    training hours used (the same statistics for both lags, so flow_{t-1} of sample t equals
    flow_t of sample t-1).

    Parameters
    ----------
    root : str or PathLike, optional
        Data root holding ``traffic/``; default ``$DGL_IFLOW_DATA``, else ``~/.dgl_iflow/data``.
    verify : bool
        Check the published sizes and sha256 checksums before reading. Without it the pickles
        are read unchecked, and reading a pickle runs whatever code it carries: only for
        files you trust.
    subsample : bool
        Use the paper's halved split (see above).
    download : bool
        Download missing files from :data:`SOURCE` (or ``$DGL_IFLOW_DATA_URL``) into
        ``<root>/traffic/`` first; downloads are checked before they are kept.
    target : {"anomaly", "next_flow"}
        The node labels: the anomaly classes of hour t, or real-valued targets, every sensor's
        flow of hour t + 1 standardized as the features are (a one-hour-ahead forecast given
        X; X | Y generates the hours that lead to a given next hour). The next hour must lie
        in the sample's own part, so the last hour of each part has no sample: one fewer
        sample in each part; the features of the others are those of ``"anomaly"``.

    Returns
    -------
    GraphDataset
        x (N, 15, 2), y (N, 15) in {0, 1} (``"next_flow"``: float targets, ``num_classes``
        None); node names are the sensor ids.

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
    if download:
        fetch_files(FOLDER, FILES, data_root)
    paths = {spec.name: require_file(folder, spec, data_root, verify) for spec in FILES}
    train = _frame(paths[TRAIN_FLOW.name], None)
    sensors = list(train.columns)
    test = _frame(paths[TEST_FLOW.name], sensors)
    raw_labels = _frame(paths[LABELS.name], sensors)
    hours = train.index.append(test.index)
    if not raw_labels.index.equals(hours):
        raise DataFileError(f"data file {LABELS.name} in folder {folder} must have one row per "
                            f"hour of the train then test flow frames ({len(hours)} rows, same "
                            f"timestamps); it has {len(raw_labels)} rows")
    label_values = raw_labels.to_numpy(dtype=np.float64)
    if not np.isin(label_values, RAW_LABELS).all():
        raise DataFileError(f"data file {LABELS.name} in folder {folder} has values other than "
                            f"{RAW_LABELS}")
    src, dst = _neighbor_edges(paths[NEIGHBORS.name], sensors)

    flow = np.concatenate([train.to_numpy(np.float64), test.to_numpy(np.float64)])
    num_train_hours, num_test_hours = len(train), len(test)
    first_train_hour = num_train_hours - num_train_hours // 2 if subsample else 0
    test_end = num_train_hours + (num_test_hours // 2 if subsample else num_test_hours)
    if num_train_hours - first_train_hour < 2 or test_end == num_train_hours:
        raise DataFileError(f"flow frames in folder {folder} have {num_train_hours} train and "
                            f"{num_test_hours} test hours; too few to build samples")
    # The sample of hour t needs hour t-1, so the first hour of the training block only
    # serves as the previous hour of the second.
    current = np.arange(first_train_hour + 1, test_end)
    fit_hours = flow[first_train_hour:num_train_hours]
    mean = fit_hours.mean(axis=0)
    std = fit_hours.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant sensor stays centred rather than dividing by 0
    scaled = (flow - mean) / std
    num_train = num_train_hours - first_train_hour - 1
    if target == "next_flow":
        # Without the last hour of either part: its next hour is the other part's, or absent.
        current = np.delete(current, [num_train - 1, len(current) - 1])
        num_train -= 1
        y = scaled[current + 1]
    else:
        y = (label_values[current] == 1).astype(np.int64)
    x = np.stack([scaled[current], scaled[current - 1]], axis=-1)

    info = {
        "root": str(data_root.path), "root_source": data_root.source, "verified": verify,
        "files": {spec.name: {"size": spec.size, "sha256": spec.sha256} for spec in FILES},
        "subsample": subsample,
        "train_hours": [str(hours[first_train_hour + 1]), str(hours[num_train_hours - 1])],
        "test_hours": [str(hours[num_train_hours]), str(hours[test_end - 1])],
        "scaler": {"fit_on": "training hours used, per sensor, both lags", "ddof": 0,
                   "mean": mean.tolist(), "std": std.tolist()},
        "target": target,
        "labels": ("standardized flow of hour t + 1, in the sample's own part" if target == "next_flow"
                   else "raw 1 -> 1; raw 0 and 2 -> 0"),
        "graph": f"each sensor aggregates itself and its {NEIGHBORHOOD_SIZE - 1} nearest sensors",
    }
    return GraphDataset(
        name="traffic", graph=sorted_graph(src, dst, len(sensors)),
        x=torch.from_numpy(x), y=torch.from_numpy(y),
        train_idx=torch.arange(num_train), test_idx=torch.arange(num_train, len(current)),
        num_classes=None if target == "next_flow" else 2, node_names=[str(s) for s in sensors],
        feature_names=list(FEATURE_NAMES),
        info=info, raw_path=folder)
