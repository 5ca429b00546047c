// Package localcluster runs a local Kubernetes control plane (etcd and
// kube-apiserver built by hack/tools into bin/) through controller-runtime's
// envtest, with Cairn's CRDs and validating webhooks installed. `cairn dev`
// uses it with a fixed data directory so a second run keeps its state; the
// tests use it with a temporary one.
package localcluster
