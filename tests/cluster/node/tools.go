//go:build tools

// Package tools pins the Kubernetes node mains built by build-node-tools.sh: the same
// k8s.io/kubernetes version as ../go.mod, in its own module so that adding the node did not
// change the control plane's cache key.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
