"""The local HTTP retouch server that editors talk to (``autoretouch-server``).

Modules, one job each:

- ``settings``: defaults, the ``ServerSettings`` value and where the model comes from;
- ``protocol``: the msgpack pixel message, body types and query options (pure);
- ``security``: Host, Origin and token rules (pure) and their middleware;
- ``jobs``: the job store, the bounded queue, one worker per device, expiry;
- ``handlers``: the HTTP handlers, the only place that reads requests;
- ``openapi``: the OpenAPI description served at /v1/openapi.json;
- ``app``: ``init_app()``, routes and the one error-translating middleware;
- ``main``: the command line entry point.

Importing any of them starts nothing.
"""
