"""``fedhub web``: a local web console for callers, operators and auditors.

A Starlette app served by uvicorn on 127.0.0.1 only, behind a random token (like
Jupyter), acting with the user's own key store: keys never leave the machine and every
call is made, sealed and opened in this process. Every page's data is also a JSON
endpoint under ``/api/`` for scripts. Pages:

- callers (:mod:`hub.web.calls`): sites and modules, a form per function generated from
  its JSON Schema, calls with live progress, results to download;
- operators (:mod:`hub.web.operate`, given a node's data through :class:`OperatorView`,
  which ``fedhub-node web`` provides): status, queue, calls in flight, a timeline of
  recent events, graphs of calls, latency and queue depth;
- auditors (:mod:`hub.web.audits`): audit a log file, see the verdict, checkpoints and
  request lifecycles with the first bad event highlighted.
"""

from __future__ import annotations

from hub.web.app import ConsoleSettings, OperatorView, create_app, serve

__all__ = ["ConsoleSettings", "OperatorView", "create_app", "serve"]
