package kubeletstub

import (
	"context"
	"fmt"
	"maps"
	"slices"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
)

// register does for one node what the kubelet does when
// node-driver-registrar registers a CSI driver: the node's topology
// segments become Node labels, and the CSINode lists the driver with its
// node id and topology keys.
func register(ctx context.Context, c client.Client, driver, name string, nc csipb.NodeClient) error {
	info, err := nc.NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
	if err != nil {
		return fmt.Errorf("NodeGetInfo on %s: %w", name, err)
	}
	seg := info.GetAccessibleTopology().GetSegments()
	node, err := ensureNode(ctx, c, name, seg)
	if err != nil {
		return err
	}
	return ensureCSINode(ctx, c, node, storagev1.CSINodeDriver{
		Name: driver, NodeID: info.GetNodeId(), TopologyKeys: slices.Sorted(maps.Keys(seg))})
}

// ensureNode creates the Node when missing (Ready, as a kubelet would
// report it) and sets the topology labels.
func ensureNode(ctx context.Context, c client.Client, name string, labels map[string]string) (*corev1.Node, error) {
	node := &corev1.Node{}
	err := c.Get(ctx, client.ObjectKey{Name: name}, node)
	if apierrors.IsNotFound(err) {
		node = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelHostname: name}}}
		if err := c.Create(ctx, node); err != nil {
			return nil, fmt.Errorf("create Node %s: %w", name, err)
		}
		node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
			Reason: "CairnDev", Message: "simulated node of cairn dev (no kubelet; pods are not run)",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
		if err := c.Status().Update(ctx, node); err != nil {
			return nil, fmt.Errorf("Node %s status: %w", name, err)
		}
	} else if err != nil {
		return nil, err
	}
	patch := client.MergeFrom(node.DeepCopy())
	if node.Labels == nil {
		node.Labels = map[string]string{}
	}
	maps.Copy(node.Labels, labels)
	return node, c.Patch(ctx, node, patch)
}

// ensureCSINode creates the node's CSINode (owned by the Node, as the
// kubelet makes it) or sets the driver's entry in it.
func ensureCSINode(ctx context.Context, c client.Client, node *corev1.Node, d storagev1.CSINodeDriver) error {
	cn := &storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: node.Name}}
	_, err := controllerutil.CreateOrPatch(ctx, c, cn, func() error {
		cn.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}
		cn.Spec.Drivers = slices.DeleteFunc(cn.Spec.Drivers, func(x storagev1.CSINodeDriver) bool { return x.Name == d.Name })
		cn.Spec.Drivers = append(cn.Spec.Drivers, d)
		return nil
	})
	if err != nil {
		return fmt.Errorf("CSINode %s: %w", node.Name, err)
	}
	return nil
}
