// Command kubectl is the upstream kubectl (k8s.io/kubectl at the cluster's
// version), built into bin/ so the commands `cairn dev` prints work on a
// machine with no kubectl installed.
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
