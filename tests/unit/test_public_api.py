"""The public surface is what `hub.__all__` names, and every name there exists."""

from __future__ import annotations

import hub


def test_every_public_name_is_importable() -> None:
    missing = [name for name in hub.__all__ if not hasattr(hub, name)]
    assert not missing


def test_public_names_are_the_documented_ones() -> None:
    assert {"connect", "Client", "Progress", "FederationError"} <= set(hub.__all__)
    assert all(not name.startswith("_") or name == "__version__" for name in hub.__all__)


def test_every_public_error_derives_from_the_root() -> None:
    errors = [getattr(hub, n) for n in hub.__all__ if n.endswith("Error")]
    assert errors
    assert all(issubclass(e, hub.FederationError) for e in errors)
    assert issubclass(hub.CallTimeoutError, TimeoutError)


def test_the_nats_codec_and_transfer_packages_export_what_they_name() -> None:
    import hub.codec
    import hub.nats
    import hub.transfer

    for package in (hub.nats, hub.codec, hub.transfer):
        missing = [name for name in package.__all__ if not hasattr(package, name)]
        assert not missing, package.__name__
    assert {"LocalFederation", "NatsServer", "ensure_site_streams"} <= set(hub.nats.__all__)
    assert {"encode", "decode", "describe"} <= set(hub.codec.__all__)
    assert {"Sender", "Receiver", "seal_file", "upload_route"} <= set(hub.transfer.__all__)


def test_the_client_split_keeps_every_old_import_working() -> None:
    from hub import call_handle, sync_client
    from hub.client import CallHandle, Client, ModuleInfo, SyncCallHandle, SyncClient, connect

    assert (CallHandle, ModuleInfo) == (call_handle.CallHandle, call_handle.ModuleInfo)
    assert (SyncClient, SyncCallHandle, connect) == (
        sync_client.SyncClient,
        sync_client.SyncCallHandle,
        sync_client.connect,
    )
    assert (hub.Client, hub.SyncClient, hub.connect) == (Client, SyncClient, connect)
