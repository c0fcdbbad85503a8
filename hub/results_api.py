"""The kept-results part of the client's API: ``fed.requests``, ``fed.result``,
``fed.share`` and the rest, a mixin of :class:`hub.client.Client` that delegates to
:mod:`hub.results_client` (and :mod:`hub.provenance`); docs/results.md."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hub import results_client
from hub.answers import DeletedAnswer, KeepAnswer, ShareAnswer, TagsAnswer
from hub.provenance import Provenance, provenance
from hub.refs import Ref
from hub.slices import Isel, grantor, slice_result

if TYPE_CHECKING:
    from hub.call_handle import CallHandle
    from hub.client import Client

__all__ = ["ResultsMixin"]


class ResultsMixin:
    """Kept results: the requests catalog, result handles, sharing, tags, retention and
    provenance (only as part of a :class:`~hub.client.Client`)."""

    def _me(self) -> Client:
        return cast("Client", self)

    @staticmethod
    def ref(site: str, request_id: str) -> Ref:
        """The kept result of my request ``request_id`` at ``site``, to pass as an argument
        of another call by reference (the target node fetches it from ``site``)."""
        return Ref(site, request_id)

    async def requests(
        self, sites: Iterable[str] | str | None = None, **filters: Any
    ) -> results_client.RequestList:
        """My requests (and those shared with me) across sites, as typed records: see
        :func:`hub.results_client.list_requests` for the filters."""
        return await results_client.list_requests(self._me(), sites, **filters)

    async def result(
        self, request_id: str, *, site: str, result_path: Path | None = None
    ) -> CallHandle:
        """A handle on an earlier request (mine or shared with me) whose ``result()`` is
        its kept result (:func:`hub.results_client.result_handle`)."""
        return await results_client.result_handle(
            self._me(), request_id, site, result_path=result_path
        )

    async def result_slice(
        self,
        request_id: str,
        *,
        site: str,
        isel: Isel | None = None,
        variables: Iterable[str] | None = None,
        result_path: Path | None = None,
    ) -> Any:
        """Part of my kept xarray result, as ``value[variables].isel(isel)`` would give it,
        without fetching the rest: the node that keeps it opens it for this one request
        and sends only the part (:mod:`hub.slices`; ``result.sliced``)."""
        return await slice_result(
            self._me(),
            site,
            request_id,
            isel=isel,
            variables=variables,
            result_path=result_path,
        )

    async def open_result(
        self, request_id: str, *, site: str, chunks: Mapping[str, int] | None = None
    ) -> Any:
        """My kept xarray result as a lazy, dask-backed value (as ``xarray.open_dataset``
        with ``chunks`` gives): each block is fetched as a slice when computed
        (:mod:`hub.lazy`; needs ``fedhub[lazy]``). Compute it off this client's event
        loop, or use the blocking client."""
        from hub.lazy import open_lazy, require_dask

        require_dask()
        owner = await grantor(self._me(), site, request_id)
        layout = await owner.ask("describe")
        return open_lazy(owner, layout, asyncio.get_running_loop(), chunks)

    async def share(self, site: str, request_id: str, principal: str) -> ShareAnswer:
        """Share a kept result with ``name@site`` or ``group:NAME`` (no re-upload)."""
        return await results_client.share(self._me(), site, request_id, principal)

    async def unshare(self, site: str, request_id: str, principal: str) -> ShareAnswer:
        """Withdraw a share; later fetches by it are refused."""
        return await results_client.unshare(self._me(), site, request_id, principal)

    async def tag(
        self,
        site: str,
        request_id: str,
        add: Iterable[str] = (),
        remove: Iterable[str] = (),
        *,
        shared: bool = False,
    ) -> TagsAnswer:
        """Tag my result (private, or ``shared`` with those I share it with)."""
        return await results_client.tag(self._me(), site, request_id, add, remove, shared=shared)

    async def keep_result(self, site: str, request_id: str, keep_for: float) -> KeepAnswer:
        """Keep my result only ``keep_for`` seconds after its call (less than the site's)."""
        return await results_client.keep(self._me(), site, request_id, keep_for)

    async def provenance(self, site: str, request_id: str) -> Provenance:
        """The proven lineage of my request (or one shared with me): see :mod:`hub.provenance`."""
        return await provenance(self._me(), site, request_id)

    async def delete_result(self, site: str, request_id: str) -> DeletedAnswer:
        """Remove the kept result of my request now (before it expires)."""
        return await results_client.delete(self._me(), site, request_id)
