"""Downloading the published data files into the data root, checked before they count as data.

Each real data set lists its files as :class:`~dgl_iflow.data.base.DataFile` entries with the
URL they are published at (a raw file of a public repository at a fixed commit), their size and
sha256. A download streams into a hidden temporary file in the data-set folder, is checked
against both while it arrives, and only then renamed to its final name, so an interrupted,
truncated or corrupted transfer leaves nothing behind that could be read as data.

``$DGL_IFLOW_DATA_URL`` (or the ``mirror`` argument) replaces the published URLs by
``<mirror>/<folder>/<file name>``, for a local copy of the files or a server without the internet.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ..progress import progress_bar
from .base import DataFile, DataFileError, DataRoot, FileReport, inspect_file, resolve_root

#: Environment variable naming a mirror that serves ``<folder>/<file name>``.
MIRROR_ENV_VAR = "DGL_IFLOW_DATA_URL"
#: Seconds a connection may stay silent before the download counts as failed.
TIMEOUT_S = 60.0
_CHUNK_BYTES = 1 << 16


def file_url(folder_name: str, spec: DataFile, mirror: str | None = None) -> str | None:
    """Where ``spec`` is downloaded from: ``<mirror>/<folder>/<name>``, else its published URL.

    Parameters
    ----------
    folder_name : str
        The data set's folder under the data root, e.g. ``"traffic"``.
    spec : DataFile
        The file.
    mirror : str, optional
        Base URL of a mirror; default ``$DGL_IFLOW_DATA_URL``, else none.

    Returns
    -------
    str or None
        ``None`` when the file has no published source and no mirror is set.
    """
    mirror = mirror or os.environ.get(MIRROR_ENV_VAR)
    if mirror:
        return f"{mirror.rstrip('/')}/{folder_name}/{spec.name}"
    return spec.url


def _where_to_put(folder: Path, root: DataRoot, specs: Sequence[DataFile],
                  urls: Sequence[str | None]) -> str:
    """The manual way: which files, from where, into which folder."""
    listing = "; ".join(f"{spec.name} ({spec.size} bytes, sha256 {spec.sha256}, from "
                        f"{url or 'no public source'})"
                        for spec, url in zip(specs, urls))
    return (f"To fetch them by hand (e.g. without network access), put these files into folder "
            f"{folder} (data root {root.describe()}): {listing}")


def download_file(url: str, folder: Path, spec: DataFile, progress: bool = True) -> Path:
    """Download ``url`` to ``folder / spec.name`` if it has the published size and sha256.

    The bytes go to a temporary file in ``folder`` that is renamed over the target only after
    both checks passed; on any failure it is removed and nothing at the target changes.

    Parameters
    ----------
    url : str
        ``http``, ``https`` or ``file`` URL.
    folder : Path
        Data-set folder, created if missing.
    spec : DataFile
        Name, size and sha256 the file must have.
    progress : bool
        Report the bytes received on stderr: a tqdm bar on a terminal, otherwise a
        rate-limited plain line and one at the end (:func:`~dgl_iflow.progress.progress_bar`).

    Returns
    -------
    Path
        The downloaded file.

    Raises
    ------
    DataFileError
        If the server cannot be reached, the transfer breaks off, or the bytes differ from the
        published ones; the message names the file and the URL.
    """
    failed = f"download of data file {spec.name} from {url} failed"
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)  # noqa: S310  (fixed URLs)
    except urllib.error.HTTPError as err:
        raise DataFileError(f"{failed}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise DataFileError(f"{failed}: {getattr(err, 'reason', err)}") from err
    temporary: Path | None = None
    try:
        with response:
            folder.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=folder, prefix=f".{spec.name}.", suffix=".part")
            temporary = Path(name)
            digest = hashlib.sha256()
            received = 0
            with os.fdopen(handle, "wb") as file, progress_bar(
                    total=spec.size, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=spec.name, disable=not progress, leave=False) as bar:
                # Read one byte past the published size, so an oversized answer stops there.
                while chunk := response.read(min(_CHUNK_BYTES, spec.size + 1 - received)):
                    received += len(chunk)
                    if received > spec.size:
                        raise DataFileError(f"{failed}: the server sent more than the published "
                                            f"{spec.size} bytes")
                    digest.update(chunk)
                    file.write(chunk)
                    bar.update(len(chunk))
                file.flush()
                os.fsync(file.fileno())
        announced = response.headers.get("Content-Length")
        if announced is not None and received < int(announced):
            raise DataFileError(f"{failed}: the transfer broke off after {received} of "
                                f"{announced} bytes (interrupted); nothing was written to {folder}")
        if received != spec.size:
            raise DataFileError(f"{failed}: received {received} of {spec.size} bytes "
                                f"(truncated); nothing was written to {folder}")
        if digest.hexdigest() != spec.sha256:
            raise DataFileError(f"{failed}: the bytes are corrupted, sha256 "
                                f"{digest.hexdigest()} instead of {spec.sha256}; nothing was "
                                f"written to {folder}")
        target = folder / spec.name
        os.replace(temporary, target)
        temporary = None
        return target
    except (http.client.HTTPException, OSError) as err:
        raise DataFileError(f"{failed}: {err!r}; nothing was written to {folder}") from err
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def fetch_files(folder_name: str, specs: Sequence[DataFile],
                root: DataRoot | str | os.PathLike | None = None,
                *, mirror: str | None = None, replace: bool = False,
                progress: bool = True) -> dict[str, FileReport]:
    """Download the files of one data set that are missing from the data root.

    Parameters
    ----------
    folder_name : str
        The data set's folder under the data root.
    specs : sequence of DataFile
        Its published files; those without a URL (and no mirror) are left alone.
    root : DataRoot, str or PathLike, optional
        Data root; default ``$DGL_IFLOW_DATA``, else ``~/.dgl_iflow/data``.
    mirror : str, optional
        Base URL replacing the published ones; default ``$DGL_IFLOW_DATA_URL``.
    replace : bool
        Also download the files present with another size or checksum, replacing them.
        Without it such files are kept (they may be your own) and reported as they are.
    progress : bool
        Show a progress bar per file.

    Returns
    -------
    dict[str, FileReport]
        The state of every file afterwards, in the order of ``specs``.

    Raises
    ------
    DataFileError
        If a download fails; the message names the file and URL, and which files to put into
        which folder by hand (when the network is out of reach).
    """
    data_root = resolve_root(root)
    folder = data_root.path / folder_name
    reports = {spec.name: inspect_file(folder, spec) for spec in specs}
    wanted = [spec for spec in specs
              if reports[spec.name].status == "missing" or (replace and not reports[spec.name].ok)]
    urls = [file_url(folder_name, spec, mirror) for spec in wanted]
    for spec, url in zip(wanted, urls):
        if url is None:
            continue
        try:
            download_file(url, folder, spec, progress)
        except DataFileError as err:
            raise DataFileError(f"{err}. {_where_to_put(folder, data_root, wanted, urls)}") \
                from err.__cause__
        reports[spec.name] = inspect_file(folder, spec)
    return reports
