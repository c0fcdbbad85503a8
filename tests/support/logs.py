"""Capturing structlog events in tests, whatever ran before in the same process."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, MutableMapping
from types import ModuleType
from typing import Any

import structlog
from structlog.testing import capture_logs


@contextlib.contextmanager
def captured(*modules: ModuleType) -> Iterator[list[MutableMapping[str, Any]]]:
    """``structlog.testing.capture_logs``, also for the module-level ``log`` of ``modules``.

    A CLI run in the test process (``configure_logging``) filters by its level and caches
    each logger on its first use with the CLI's processors, and a cached logger no longer
    sees ``capture_logs``; within the block every level is kept and each module logs
    through a logger made afresh.
    """
    wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET))
    try:
        with capture_logs() as logs:
            saved = {module: module.log for module in modules}
            for module in modules:
                module.log = structlog.get_logger(module.__name__)
            try:
                yield logs
            finally:
                for module, logger in saved.items():
                    module.log = logger
    finally:
        structlog.configure(wrapper_class=wrapper)
