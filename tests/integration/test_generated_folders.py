"""A generated federation runs wherever its folders are copied.

The configs name their files (TLS certificates, keys, the CA) relative to their own folder,
where their server runs; so an operator can copy the folder to another machine or path.
Generated in one folder, moved, and started from the moved copy (real servers, TLS and
NKeys on): messages cross between the sites and the hub's directory is set up.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from hub.nats import LocalFederation, connect
from hub.subjects import DIRECTORY_STREAM


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


async def test_a_federation_generated_in_one_folder_runs_after_being_moved(tmp_path: Path) -> None:
    made = tmp_path / "made-here"
    LocalFederation(made)  # writes federation.toml and generates every party's folder
    configs = [*made.rglob("*.conf")]
    assert configs, "nothing generated"
    for config in configs:
        text = config.read_text()
        assert str(made) not in text and str(tmp_path) not in text, config
    before = digests(made)

    moved = tmp_path / "another" / "machine"
    moved.parent.mkdir(parents=True)
    shutil.move(made, moved)
    fed = LocalFederation(moved)  # generates again: nothing may change
    assert digests(moved) == before, "the moved folders run as they were copied"
    assert not made.exists()

    async with fed:  # every site reaches every other over TLS with its NKeys
        hub = await connect(fed.hub_url, **fed.hub_options())
        try:
            info = await hub.jetstream(domain="hub").stream_info(DIRECTORY_STREAM)
        finally:
            await hub.close()
        assert len(info.config.sources or []) == len(fed.sites)
        for site in fed.sites:
            assert fed.leaves[site].config_path.is_relative_to(moved)
        assert (moved / "generated" / "sites" / "hereon" / "jetstream").is_dir()
