import asyncio, time
from pathlib import Path
import numpy as np, xarray as xr
import nats
import hub.topology
from support.world import World
from hub.client import Client
from hub.errors import NotFoundError
from node.daemon import NodeDaemon

async def test_fed(tmp_path, monkeypatch):
    monkeypatch.setattr(hub.topology, "_leaf_publish_deny", lambda site, sites: [f"fh.events.{o}.>" for o in sites if o != site])
    federation = await hub.topology.start_local_federation(tmp_path / "fed")
    try:
        w = World(tmp_path)
        w.person("klaus@geomar")
        cfg = w.node_config("hereon", nats_url=federation.site_url("hereon"), trust=["geomar"], users=["klaus@geomar"], grants=[("klaus@geomar", "climate", "*")])
        async with NodeDaemon(cfg) as node:
            async with await Client.connect(federation.site_url("geomar"), "klaus@geomar", home=w.store.home) as fed:
                t=time.time()
                async with asyncio.timeout(10):
                    while True:
                        try:
                            await fed.module_info("hereon", "climate"); break
                        except NotFoundError:
                            await asyncio.sleep(0.05)
                print("reach", time.time()-t)
                da = xr.DataArray(np.arange(12.0).reshape(3,4), dims=("time","x"), name="t")
                for i in range(3):
                    t=time.time()
                    r = await fed.call("hereon.climate.compute_sum", da=da, timeout=20)
                    print("call", time.time()-t, r)
                h = await fed.submit("hereon.climate.sleep", seconds=0.1)
                print(await h.status())
    finally:
        await federation.stop()
