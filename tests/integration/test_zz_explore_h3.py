import asyncio, time
from pathlib import Path
import numpy as np, xarray as xr
from support.world import World
from hub.client import Client
from hub.errors import NotFoundError
from node.daemon import NodeDaemon

async def reach(fed, site, module):
    async with asyncio.timeout(10):
        while True:
            try:
                return await fed.module_info(site, module)
            except NotFoundError:
                await asyncio.sleep(0.05)

async def test_fed(federation, tmp_path):
    w = World(tmp_path)
    w.person("klaus@geomar")
    cfg = w.node_config("hereon", nats_url=federation.site_url("hereon"), trust=["geomar"], users=["klaus@geomar"], grants=[("klaus@geomar", "climate", "*")])
    t=time.time()
    async with NodeDaemon(cfg) as node:
        print("start", time.time()-t)
        async with await Client.connect(federation.site_url("geomar"), "klaus@geomar", home=w.store.home) as fed:
            t=time.time()
            await reach(fed, "hereon", "climate")
            print("reach", time.time()-t)
            da = xr.DataArray(np.arange(12.0).reshape(3,4), dims=("time","x"), name="t")
            t=time.time()
            r = await fed.call("hereon.climate.compute_sum", da=da, timeout=20)
            print("call", time.time()-t, r)
            t=time.time()
            r = await fed.call("hereon.climate.compute_sum", da=da, timeout=20)
            print("call", time.time()-t, r)
