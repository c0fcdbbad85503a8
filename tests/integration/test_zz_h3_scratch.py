import asyncio, time
from support.world import World
from hub.client import Client
from node.daemon import NodeDaemon

async def test_restart(tmp_path, fresh_nats_server):
    w = World(tmp_path)
    w.person("klaus@geomar")
    for i in range(3):
        cfg = w.node_config("hereon", name=f"n{i}", nats_url=fresh_nats_server.url, trust=["geomar"], users=["klaus@geomar"], grants=[("klaus@geomar", "climate", "*")])
        async with NodeDaemon(cfg) as node:
            async with await Client.connect(fresh_nats_server.url, "klaus@geomar", home=w.store.home) as fed:
                t = time.time()
                r = await fed.call("hereon.climate.scale", values=[1.0], timeout=60)
                print("call", i, time.time() - t)
