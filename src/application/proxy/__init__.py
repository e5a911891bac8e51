"""Request distribution over api_server nodes: the node table, dispatch strategies, health
and the retrying forwarder. Pure policy; HTTP lives in adapters/http/proxy_*."""

from .dispatch import Dispatcher, NoHealthyNode, UnknownModel
from .forwarding import Forwarded, Forwarder, Upstream, UpstreamError, UpstreamResponse
from .health import HealthMonitor, NodeProbe
from .nodes import NodeStatus, NodeTable
from .strategies import STRATEGIES, pick_node

__all__ = [
    "STRATEGIES",
    "Dispatcher",
    "Forwarded",
    "Forwarder",
    "HealthMonitor",
    "NoHealthyNode",
    "NodeProbe",
    "NodeStatus",
    "NodeTable",
    "UnknownModel",
    "Upstream",
    "UpstreamError",
    "UpstreamResponse",
    "pick_node",
]
