// Package e2e runs Cairn end to end: `cairn dev` with real node agents,
// `cairn replica` and `cairn engine` processes on temporary directories,
// FUSE-backed loop devices and fio against them.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/localcluster"
	"github.com/cairnstore/cairn/internal/testutil"
)

// The suite's cluster: `cairn dev` with suiteNodes node agents, without
// its scheduler: TestScheduledRuns runs one with an injected clock.
var (
	suite    *testutil.DevSuite
	k8s      client.Client
	restCfg  *rest.Config
	dataDir  string
	devOut   *os.File
	cairnBin string
	vols     testutil.Volumes
)

const suiteNodes = 4

func TestMain(m *testing.M) {
	os.Exit(testutil.RunDevSuite(m, "end-to-end suite", testutil.DevSuiteOptions{
		RootFor:           "loop devices, FUSE",
		Tools:             []string{"fio", "losetup"},
		TempPrefix:        "cairn-e2e-",
		Args:              []string{"--samples=false", "--nodes", fmt.Sprint(suiteNodes), "--no-scheduler"},
		Nodes:             suiteNodes,
		RecordHealth:      true,
		LogTailsOnFailure: true,
		Setup: func(s *testutil.DevSuite) error {
			suite, k8s, restCfg = s, s.Site.Client, s.Site.Config
			cairnBin, dataDir, devOut = s.Bin, s.DataDir, s.Out
			vols = testutil.Volumes{Client: k8s, Wait: wait, Tick: tick, Healthy: func(c *assert.CollectT, v *v1.Volume) {
				assert.True(c, current(c, v), "kstatus not Current")
			}}
			return nil
		},
		Teardown: func(*testutil.DevSuite, bool) error { return checkEveryObjectsHealth() },
	}))
}

// checkEveryObjectsHealth reads every Cairn object the tests left (real
// statuses written by the real controllers and agents, never hand-written)
// with kstatus and with Argo CD's health script, and fails when they
// disagree.
func checkEveryObjectsHealth() error {
	crds, err := localcluster.CRDs()
	if err != nil {
		return err
	}
	var errs []error
	checked := 0
	for _, crd := range crds {
		list := &unstructured.UnstructuredList{}
		list.SetGroupVersionKind(schema.GroupVersionKind{Group: crd.Spec.Group, Version: "v1alpha1", Kind: crd.Spec.Names.ListKind})
		if err := k8s.List(context.Background(), list); err != nil {
			return err
		}
		for _, item := range list.Items {
			res, err := kstatus.Compute(&item)
			if err == nil {
				err = healthAgrees(item.Object, res.Status)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", item.GetKind(), item.GetName(), err))
			}
			checked++
		}
	}
	fmt.Fprintf(os.Stderr, "e2e: Argo CD and kstatus health agree on %d of %d objects\n", checked-len(errs), checked)
	return errors.Join(errs...)
}
