// Command etcd is upstream etcd, built from go.etcd.io/etcd/server/v3 at the
// version Cairn pins. It is a separate module because k8s.io/kubernetes
// requires a newer etcd that would otherwise win version selection.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
