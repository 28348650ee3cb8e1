//go:build tools

// Package tools pins the Kubernetes binaries the test bed builds, all of one version:
// kube-apiserver and kubectl (every profile), and for the real node of the `test` profile
// kubelet, kube-controller-manager, kube-scheduler and kube-proxy.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
