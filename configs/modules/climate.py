"""Climate statistics served by site hereon (an example backend module).

Plain Python: the only fedhub name is the optional ``Progress`` annotation.
"""

from __future__ import annotations

import time

import numpy as np
import xarray as xr

from hub.progress import Progress


def compute_sum(da: xr.DataArray, dim: str = "time") -> xr.DataArray:
    """Sum a field along one dimension.

    Parameters
    ----------
    da
        The field, e.g. daily temperature anomalies.
    dim
        The dimension to sum over.

    Returns
    -------
    xr.DataArray
        The field summed over ``dim``.
    """
    return da.sum(dim=dim, keep_attrs=True)


def regional_mean(da: xr.DataArray, steps: int = 5, progress: Progress | None = None) -> float:
    """Area mean of a field, computed slowly in ``steps`` chunks with progress.

    Parameters
    ----------
    da
        The field to average.
    steps
        Number of chunks (each takes a moment).
    """
    chunks = np.array_split(np.asarray(da.values).ravel(), steps)
    total = 0.0
    for i, chunk in enumerate(chunks, start=1):
        time.sleep(0.2)
        total += float(chunk.sum())
        if progress is not None:
            progress.report(i / steps, f"chunk {i} of {steps}")
    return total / da.size
