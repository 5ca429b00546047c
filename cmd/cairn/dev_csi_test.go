package main

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairnstore/cairn/internal/testutil"
)

// devPVC is what a user applies in `make dev`: a PVC of the sample gold
// policy's StorageClass.
const devPVC = `apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: smoke-data, namespace: default}
spec:
  storageClassName: cairn-gold
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
`

// checkDevPVC applies a PVC with the printed kubectl and waits until the
// real csi-provisioner and PV binding made it Bound: no step beyond
// `kubectl apply`.
func checkDevPVC(t *testing.T, kubeconfig string) {
	t.Helper()
	for _, s := range devSidecars {
		testutil.RequireTool(t, s.name)
	}
	apply := exec.Command(printedKubectl, "apply", "-f", "-")
	apply.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	apply.Stdin = strings.NewReader(devPVC)
	out, err := apply.CombinedOutput()
	require.NoError(t, err, "kubectl apply: %s", out)
	c := devClient(t, kubeconfig)
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		pvc := &corev1.PersistentVolumeClaim{}
		assert.NoError(ct, c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: "smoke-data"}, pvc))
		assert.Equal(ct, corev1.ClaimBound, pvc.Status.Phase)
	}, 3*time.Minute, 250*time.Millisecond)
}
