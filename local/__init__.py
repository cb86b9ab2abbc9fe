"""The dev host (``python -m local``): runs ``function_app.app`` the way ``func start`` would.

Core Tools cannot be installed everywhere, so the repo carries its own host: HTTP triggers on
``http://127.0.0.1:7071/api/...``, Service Bus queue triggers fed from the local PostgreSQL queue,
timer triggers on their schedules, and an embedded PostgreSQL when ``DATABASE_URL`` is not set.
"""

from local.host import FunctionInfo, HostStartError, LocalHost, main, serve
from local.host_json import HostConfig

__all__ = ["FunctionInfo", "HostConfig", "HostStartError", "LocalHost", "main", "serve"]
