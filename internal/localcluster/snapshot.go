package localcluster

import (
	"fmt"
	"io/fs"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/cairnstore/cairn/config"
)

// InstallSnapshotCRDs installs the VolumeSnapshot, VolumeSnapshotContent
// and VolumeSnapshotClass CRDs and their group counterparts, which the CSI
// snapshotter and snapshot-controller need (embedded from
// config/snapshot-crds), and waits until they are served.
func (c *Cluster) InstallSnapshotCRDs() error {
	var crds []*apiextensionsv1.CustomResourceDefinition
	paths, err := fs.Glob(config.SnapshotCRDs, "snapshot-crds/*.yaml")
	if err != nil {
		return err
	}
	for _, p := range paths {
		err := decodeAll(config.SnapshotCRDs, p, func() any { return &apiextensionsv1.CustomResourceDefinition{} }, func(o any) {
			crds = append(crds, o.(*apiextensionsv1.CustomResourceDefinition))
		})
		if err != nil {
			return err
		}
	}
	_, err = envtest.InstallCRDs(c.Config, envtest.CRDInstallOptions{CRDs: crds, MaxTime: installWait})
	if err != nil {
		return fmt.Errorf("install snapshot CRDs: %w", err)
	}
	return nil
}
