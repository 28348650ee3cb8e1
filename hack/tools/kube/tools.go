//go:build tools

// Package tools pins the Kubernetes control-plane binaries the test bed builds:
// kube-apiserver and a kubectl of the same version.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
