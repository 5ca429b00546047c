// Package csi runs csi-sanity and the driver's error and idempotency
// tables against the real driver: `cairn dev` with two node agents, its
// CSI controller socket and dev-node-1's node socket, real replica and
// engine processes and real mounts on loop devices.
package csi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/testutil"
)

// The suite's cluster and the driver's sockets.
var (
	suite          *testutil.DevSuite
	k8s            client.Client
	tmp            string
	devOut         *os.File
	controllerSock string // DATA/csi/controller.sock
	nodeSock       string // DATA/nodes/dev-node-1/csi.sock
	controller     csipb.ControllerClient
	node           csipb.NodeClient
	identity       csipb.IdentityClient
)

const (
	suiteNodes = 2
	// sanityNode is the node whose node service the tests drive.
	sanityNode = "dev-node-1"
	// backupTarget is the file:// BackupTarget backup-type snapshots use.
	backupTarget = "csi-sanity"
)

func TestMain(m *testing.M) {
	os.Exit(testutil.RunDevSuite(m, "CSI suite", testutil.DevSuiteOptions{
		RootFor: "loop devices, FUSE, mounts",
		Tools:   []string{"losetup", "mount", "blkid", "mkfs.ext4", "mkfs.xfs", "resize2fs", "xfs_growfs"},
		// A short path: the node's socket paths must fit in sun_path.
		TempPrefix: "ccsi-",
		// Kept after a failing run for its logs: dev.log, and under dev/
		// the manager's, each node agent's (nodes/NAME/node.log) and their
		// engines' and replicas' logs. Replica files are sparse.
		KeepTempOnFailure: true,
		Args:              []string{"--samples=false", "--nodes", fmt.Sprint(suiteNodes), "--no-scheduler"},
		Nodes:             suiteNodes,
		Setup:             connect,
	}))
}

// connect reads the sockets from the banner, makes the clients and waits
// until the node service probes ready and the backup target exists.
func connect(s *testutil.DevSuite) error {
	suite, tmp, devOut, k8s = s, s.Tmp, s.Out, s.Site.Client
	if err := csiSockets(s.Banner["CSI"]); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := dial(); err != nil {
		return err
	}
	if err := waitProbe(ctx); err != nil {
		return err
	}
	bt := &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: backupTarget}}
	bt.Spec.URL = "file://" + filepath.Join(tmp, "backups")
	return k8s.Create(ctx, bt)
}

// csiSockets sets the controller socket and sanityNode's node socket from
// the banner's CSI line, "DATA/csi/controller.sock (nodes: DATA/nodes/NAME/csi.sock)".
func csiSockets(line string) error {
	f := strings.Fields(line)
	if len(f) != 3 || f[1] != "(nodes:" {
		return fmt.Errorf("cairn dev printed no CSI line with the sockets (got %q)", line)
	}
	controllerSock = f[0]
	nodeSock = strings.Replace(strings.TrimSuffix(f[2], ")"), "NAME", sanityNode, 1)
	return nil
}

// dial connects the suite's own clients to both sockets.
func dial() error {
	cc, err := grpc.NewClient("unix://"+controllerSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	nc, err := grpc.NewClient("unix://"+nodeSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	controller, node, identity = csipb.NewControllerClient(cc), csipb.NewNodeClient(nc), csipb.NewIdentityClient(nc)
	return nil
}

// waitProbe waits until both endpoints probe ready.
func waitProbe(ctx context.Context) error {
	cc, _ := grpc.NewClient("unix://"+controllerSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer cc.Close()
	for _, id := range []csipb.IdentityClient{identity, csipb.NewIdentityClient(cc)} {
		for {
			r, err := id.Probe(ctx, &csipb.ProbeRequest{})
			if err == nil && r.GetReady().GetValue() {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("CSI probe not ready within 2 minutes: %v", err)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

func clientKey(name string) client.ObjectKey { return client.ObjectKey{Name: name} }
