//go:build tools

// Package tools pins the Helm the test bed and `make lint` use (helm lint, helm template,
// helm install into the real node's API server).
package tools

import _ "helm.sh/helm/v3/cmd/helm"
