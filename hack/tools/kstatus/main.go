// kstatus prints what sigs.k8s.io/cli-utils/pkg/kstatus (the library Flux and Argo CD judge
// health with) says about Kubernetes objects: it reads one object, or a List of them, as JSON
// or YAML on stdin and prints one JSON line per object:
//
//	{"kind":"Server","name":"web-1","status":"Current","message":"Resource is Ready"}
//
// kubenova's tests run it over the lifecycle of its resources, so what GitOps tools see is
// checked against the library itself rather than against a reading of its rules.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type line struct {
	Kind       string             `json:"kind"`
	Name       string             `json:"name"`
	Namespace  string             `json:"namespace,omitempty"`
	Status     string             `json:"status"`
	Message    string             `json:"message"`
	Conditions []status.Condition `json:"conditions,omitempty"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	raw, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	doc, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return fmt.Errorf("not JSON or YAML: %w", err)
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(doc); err != nil {
		return fmt.Errorf("not a Kubernetes object: %w", err)
	}
	objects := []unstructured.Unstructured{*obj}
	if obj.IsList() {
		list, err := obj.ToList()
		if err != nil {
			return err
		}
		objects = list.Items
	}
	enc := json.NewEncoder(out)
	for i := range objects {
		u := &objects[i]
		res, err := status.Compute(u)
		if err != nil {
			return fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
		}
		l := line{u.GetKind(), u.GetName(), u.GetNamespace(), res.Status.String(), res.Message, res.Conditions}
		if err := enc.Encode(l); err != nil {
			return err
		}
	}
	return nil
}
