package kubeletstub

import (
	"context"
	"fmt"
	"sync"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// Node is one simulated node: its name, data directory and CSI node
// socket.
type Node struct {
	Name   string
	Dir    string
	Socket string
}

// Options configures the stand-in.
type Options struct {
	// Config reaches the API server.
	Config *rest.Config
	// Driver is the CSI driver name whose volumes are handled.
	Driver string
	// Nodes are the simulated nodes.
	Nodes []Node
	// Log receives the stand-in's log.
	Log logr.Logger
}

// node is a registered simulated node with its CSI connection.
type node struct {
	Node
	csi  csipb.NodeClient
	conn *grpc.ClientConn
}

// Stub is a running kubelet stand-in.
type Stub struct {
	driver string
	nodes  map[string]*node
	client client.Client
	// published holds what each pod's volumes are published at.
	mu        sync.Mutex
	published map[types.UID]*podVolumes
}

// Start registers every node (waiting up to registerTimeout for its CSI
// socket) and runs the stand-in until ctx ends; stop waits for it.
func Start(ctx context.Context, o Options) (stop func(), err error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	mgr, err := ctrl.NewManager(o.Config, ctrl.Options{Scheme: scheme, Logger: o.Log,
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		// cairn dev runs one stand-in per cluster in one process; the
		// names only matter to metrics, which the stand-in does not serve.
		Controller: ctrlconfig.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		return nil, err
	}
	s := &Stub{driver: o.Driver, nodes: map[string]*node{}, client: mgr.GetClient(), published: map[types.UID]*podVolumes{}}
	direct, err := client.New(o.Config, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	if err := s.registerAll(ctx, direct, o.Nodes); err != nil {
		s.close()
		return nil, err
	}
	if err := s.setup(mgr); err != nil {
		s.close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			o.Log.Error(err, "Kubelet stand-in stopped")
		}
		s.unmountAll(o.Log)
		s.close()
	}, nil
}

// registerTimeout bounds the wait for a node agent's CSI socket.
const registerTimeout = 2 * time.Minute

// registerAll connects to every node's CSI socket and registers the node
// once it answers.
func (s *Stub) registerAll(ctx context.Context, c client.Client, nodes []Node) error {
	ctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	for _, n := range nodes {
		conn, err := grpc.NewClient("unix://"+n.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		nd := &node{Node: n, csi: csipb.NewNodeClient(conn), conn: conn}
		s.nodes[n.Name] = nd
		// WaitForReady: the agent creates its socket a moment after it starts.
		if err := register(ctx, c, s.driver, n.Name, waitingNode{nd.csi}); err != nil {
			return fmt.Errorf("register node %s: %w", n.Name, err)
		}
	}
	return nil
}

func (s *Stub) close() {
	for _, n := range s.nodes {
		_ = n.conn.Close()
	}
}

// waitingNode makes NodeGetInfo wait until the socket serves.
type waitingNode struct{ csipb.NodeClient }

func (w waitingNode) NodeGetInfo(ctx context.Context, r *csipb.NodeGetInfoRequest, opts ...grpc.CallOption) (*csipb.NodeGetInfoResponse, error) {
	return w.NodeClient.NodeGetInfo(ctx, r, append(opts, grpc.WaitForReady(true))...)
}

// unmountAll unpublishes and unstages everything published and deletes
// the VolumeAttachments, as a node going down loses its mounts and
// devices: the node agents can then detach the devices, and the next start
// attaches the pods' volumes afresh (a device path from before is stale).
func (s *Stub) unmountAll(l logr.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rec := range s.published {
		for _, p := range rec.volumes {
			if err := unpublish(ctx, s.nodes[rec.node], p, true); err != nil {
				l.Error(err, "Unmount on stop", "pod", rec.key, "pv", p.pv)
				continue
			}
			va := &storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: attachmentName(p.handle, s.driver, rec.node)}}
			if err := client.IgnoreNotFound(s.client.Delete(ctx, va)); err != nil {
				l.Error(err, "Delete VolumeAttachment on stop", "volumeAttachment", va.Name)
			}
		}
	}
}
