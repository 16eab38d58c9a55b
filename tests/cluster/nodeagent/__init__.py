"""tsb node agent: a test-only kubelet (and scheduler) stand-in for the local e2e cluster.

It registers one Node, binds pending pods to it, runs their containers as local
processes in private mount and PID namespaces with their volumes bind-mounted,
reports kubelet-like pod status, provisions hostPath volumes and makes Service
names reachable. See tests/cluster/nodeagent/__main__.py for the command line
and /work/shared/TEST_CLUSTER.md ("The node agent") for the why.
"""
