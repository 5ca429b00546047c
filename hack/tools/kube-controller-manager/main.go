// Command kube-controller-manager is the upstream Kubernetes controller
// manager, built from k8s.io/kubernetes like kube-apiserver, so `cairn dev`
// and the end-to-end tests get real owner-reference garbage collection and
// PV/PVC binding.
package main

import (
	"os"
	_ "time/tzdata"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
