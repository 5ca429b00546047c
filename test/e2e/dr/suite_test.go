// Package dr runs disaster recovery end to end across two local clusters:
// `cairn dev --dr-site` starts site A (the primary: etcd, kube-apiserver,
// kube-controller-manager, the manager, node agents) and site B (the same,
// its manager a child process, under DATA/dr-site), both using the one
// versitygw dev runs. Volumes written through A's block devices are backed
// up to the shared bucket; B's DisasterRecoveryVolumes follow and activate.
package dr

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairnstore/cairn/internal/testutil"
)

// site is one of the two clusters.
type site struct {
	name string
	k8s  client.Client
	vols testutil.Volumes
	dir  string // its data directory (nodes under dir/nodes)
}

var (
	suite        *testutil.DevSuite
	siteA, siteB *site
	dataDir      string
	cairnBin     string
	s3Endpoint   string
	metricsB     string // URL of B's manager metrics
)

const suiteNodes = 2

func TestMain(m *testing.M) {
	os.Exit(testutil.RunDevSuite(m, "DR end-to-end suite", testutil.DevSuiteOptions{
		RootFor:           "loop devices, FUSE",
		Bin:               []string{"versitygw"},
		Tools:             []string{"losetup"},
		TempPrefix:        "cairn-e2e-dr-",
		Args:              []string{"--samples=false", "--nodes", fmt.Sprint(suiteNodes), "--dr-site"},
		Nodes:             suiteNodes,
		DRNodes:           suiteNodes,
		NodesTimeout:      3 * time.Minute,
		RecordHealth:      true,
		LogTailsOnFailure: true,
		Setup:             setupSuite,
	}))
}

// setupSuite keeps the two sites (A is dev's cluster, B its dr-site) and
// the S3 endpoint and B's metrics dev printed.
func setupSuite(s *testutil.DevSuite) error {
	if s.DRSite == nil {
		return fmt.Errorf("cairn dev printed no dr-site kubeconfig")
	}
	suite, cairnBin, dataDir = s, s.Bin, s.DataDir
	s3Endpoint = strings.Fields(s.Banner["S3 target"] + " ")[0]
	metricsB = s.Banner["dr-site metrics"]
	siteA = newSite("A", s.Site, dataDir)
	siteB = newSite("B", s.DRSite, filepath.Join(dataDir, "dr-site"))
	return nil
}

func newSite(name string, ds *testutil.DevSite, dir string) *site {
	return &site{name: name, k8s: ds.Client, vols: testutil.Volumes{Client: ds.Client, Wait: wait, Tick: tick}, dir: dir}
}
