"""The e2e node's volume provisioner: hostPath volumes under the cluster directory."""
