"""Many hosts behind one API, coordinated through etcd (see the README's "Many hosts").

Each host registers under a lease and writes the sandboxes it runs into a catalog
in etcd; any host, or a gateway with no VMs, answers the whole API and forwards a
sandbox's calls to its host. No consensus of Ember's own: etcd's.
"""

from ember.cluster.daemon import serve_gateway, serve_host
from ember.cluster.node import Node
from ember.cluster.settings import ClusterSettings

__all__ = ["ClusterSettings", "Node", "serve_gateway", "serve_host"]
