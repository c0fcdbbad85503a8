"""``fedhub web``: the web console, a local app like Jupyter.

It runs on this machine, bound to 127.0.0.1, and answers only requests that carry its
token (the URL it prints sets it as a cookie); requests for another host name are refused
(DNS rebinding). It acts with the user's own key store through a :class:`hub.client.Client`
in the server process: keys never leave the machine, and the browser sees only what a call
returns. Every page's data is also a JSON endpoint (``/api/...``) scripts can use with the
token in an ``X-Fedhub-Token`` header. Templates and assets ship in the package (no CDN).

Built so far: the caller's pages (modules, and a module's functions with their docs and a
form per function generated from its JSON Schema). See docs/calling.md.
"""
