import asyncio, time
from pathlib import Path
import numpy as np, xarray as xr
from support.world import World
from hub.client import Client
from node.daemon import NodeDaemon

async def test_fed(federation, tmp_path):
    w = World(tmp_path)
    w.person("klaus@geomar")
    cfg = w.node_config("hereon", nats_url=federation.site_url("hereon"), trust=["geomar"], users=["klaus@geomar"], grants=[("klaus@geomar", "climate", "*")])
    t=time.time()
    async with NodeDaemon(cfg) as node:
        print("start", time.time()-t)
        async with await Client.connect(federation.site_url("geomar"), "klaus@geomar", home=w.store.home) as fed:
            da = xr.DataArray(np.arange(12.0).reshape(3,4), dims=("time","x"), name="t")
            t=time.time()
            r = await fed.call("hereon.climate.compute_sum", da=da, timeout=20)
            print("call", time.time()-t, r)
