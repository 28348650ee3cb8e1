//go:build tools

// Package tools pins kubeconform, the schema checker `make lint` runs over the Helm chart's
// rendered manifests and the examples (against schemas made offline from the Kubernetes
// module's OpenAPI documents and from kubenova's own CRDs).
package tools

import _ "github.com/yannh/kubeconform/cmd/kubeconform"
