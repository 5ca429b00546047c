package main

import (
	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/cairnstore/cairn/controllers/node"
	"github.com/cairnstore/cairn/csi"
)

func init() { addCommand(newNodeCmd) }

// newNodeCmd runs the node agent: it registers the node, heartbeats, and
// runs the node's Replica and Engine objects as child processes.
func newNodeCmd() *cobra.Command {
	var (
		o          node.Options
		kubeconfig string
		verbosity  int
	)
	var csiEndpoint string
	tlsOn := true
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run the node agent: register the node and run its replicas and engines as child processes",
		Long: `node registers a CairnNode, renews its Lease in cairn-system and turns the
Replica and Engine objects assigned to --name into supervised "cairn replica"
and "cairn engine" children, keeping their data, sockets, tokens and logs under
--data-dir. SIGTERM stops the children (engines first, so they flush).
Replica traffic between nodes uses TLS 1.3 keyed by each volume's token;
--tls=false turns it off for the agent and its children.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			applyTLS(tlsOn)
			o.PlaintextTCP = !tlsOn
			log := newLogger(verbosity).WithValues("node", o.Name)
			ctrl.SetLogger(log)
			o.Log = log
			var cfg *rest.Config
			var err error
			if kubeconfig != "" {
				cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
			} else {
				cfg, err = ctrl.GetConfig()
			}
			if err != nil {
				return err
			}
			if csiEndpoint != "" {
				o.Setup = func(mgr ctrl.Manager) error { return csi.AddNode(mgr, csiEndpoint, o.Name, o.Zone) }
			}
			return node.Run(ctrl.SetupSignalHandler(), cfg, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Name, "name", "", "node name (CairnNode name, Replica/Engine spec.nodeID)")
	f.StringVar(&o.DataDir, "data-dir", "", "directory holding replicas, mounts, sockets, tokens and logs")
	f.StringVar(&o.Zone, "zone", "", "zone reported in CairnNode status")
	f.StringVar(&o.Address, "address", "127.0.0.1", "address replicas listen on and report")
	f.StringVar(&o.ReplicaPorts, "replica-ports", node.DefaultReplicaPorts, "range LO-HI replica ports are chosen from (keep it outside the ephemeral range, net.ipv4.ip_local_port_range)")
	f.StringVar(&o.Binary, "cairn-binary", "", "cairn executable the children run (default: this one)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster or $KUBECONFIG)")
	f.IntVarP(&verbosity, "v", "v", 0, "log verbosity (0 info, 1+ debug)")
	f.StringVar(&csiEndpoint, "csi-endpoint", "", "unix:///path of the CSI node socket (empty: no CSI service)")
	addTLSFlag(f, &tlsOn)
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("data-dir")
	return cmd
}
