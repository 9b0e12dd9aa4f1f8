"""The operator's side of one dfsd: the admin REST API, its OpenAPI document, and Prometheus metrics.

- :mod:`~daemon.admin.api`: :class:`AdminApi`, the HTTP handler of ``/health``, ``/metrics``
  and ``/storage/...``, and the bearer token it checks;
- :mod:`~daemon.admin.openapi`: the OpenAPI document describing every route;
- :mod:`~daemon.admin.metrics`: :class:`Metrics`, the daemon's Prometheus registry, and the
  RPC handler instrumentation.

Both take narrow protocols of what they read off the node (:class:`~daemon.admin.api.AdminNode`,
:class:`~daemon.admin.metrics.MetricsSource`, :class:`~daemon.admin.metrics.ClusterSource`),
never the whole service, so neither depends on the module that builds the node.
"""

from daemon.admin.api import MAX_BODY_BYTES, AdminApi, AdminNode, error_response, load_or_create_token
from daemon.admin.metrics import Metrics, instrument_handlers, instrument_inline

__all__ = [
    "MAX_BODY_BYTES",
    "AdminApi",
    "AdminNode",
    "Metrics",
    "error_response",
    "instrument_handlers",
    "instrument_inline",
    "load_or_create_token",
]
