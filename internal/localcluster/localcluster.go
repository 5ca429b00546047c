package localcluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/cairnstore/cairn/config"
)

// Options configures a local control plane.
type Options struct {
	// BinDir holds the etcd and kube-apiserver binaries.
	BinDir string
	// EtcdDataDir keeps etcd's state across runs; empty means a temporary
	// directory removed on Stop.
	EtcdDataDir string
	// Out receives the control plane's own output; nil discards it.
	Out io.Writer
	// ControllerManager also runs kube-controller-manager (garbage
	// collection, PV binding), its kubeconfig kept in StateDir.
	ControllerManager bool
	// StateDir holds files the control plane needs besides etcd's data;
	// empty means a temporary directory.
	StateDir string
	// WithoutCairn leaves Cairn's CRDs and webhooks out: a cluster Cairn
	// is not installed in.
	WithoutCairn bool
}

// Cluster is a running local control plane.
type Cluster struct {
	env *envtest.Environment
	// Config is an admin client configuration.
	Config *rest.Config
	// stopKCM stops kube-controller-manager when it runs.
	stopKCM func()
}

// installWait bounds the wait for installed CRDs and webhook
// configurations to be served (the snapshot CRDs use the same).
const installWait = time.Minute

// ErrMissingBinary means etcd or kube-apiserver has not been built.
var ErrMissingBinary = errors.New("control plane binary missing")

// Start brings up etcd and kube-apiserver, installs Cairn's CRDs and
// registers the validating webhooks, pointed at a local serving address that
// the caller's webhook server must listen on (see WebhookOptions).
func Start(opts Options) (*Cluster, error) {
	for _, name := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(opts.BinDir, name)); err != nil {
			return nil, fmt.Errorf("%w: %s not found in %s: run `make tools` (builds it from Go modules; about 5 minutes the first time)", ErrMissingBinary, name, opts.BinDir)
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    opts.BinDir,
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	if !opts.WithoutCairn {
		if err := addCairn(env); err != nil {
			return nil, err
		}
	}
	etcd := &envtest.Etcd{DataDir: opts.EtcdDataDir}
	env.ControlPlane.Etcd = etcd
	api := env.ControlPlane.GetAPIServer()
	if opts.Out != nil {
		etcd.Out, etcd.Err = opts.Out, opts.Out
		api.Out, api.Err = opts.Out, opts.Out
	}
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("start local control plane: %w", err)
	}
	c := &Cluster{env: env, Config: cfg}
	if opts.ControllerManager {
		if err := c.startKCM(opts); err != nil {
			_ = env.Stop()
			return nil, err
		}
	}
	return c, nil
}

// addCairn has env install Cairn's CRDs and validating webhooks.
func addCairn(env *envtest.Environment) error {
	crds, err := CRDs()
	if err != nil {
		return err
	}
	hooks, err := ValidatingWebhooks()
	if err != nil {
		return err
	}
	// envtest waits 10s by default for the CRDs to be served and the
	// webhook configurations to exist; a loaded machine can take longer.
	env.CRDs = crds
	env.CRDInstallOptions = envtest.CRDInstallOptions{MaxTime: installWait}
	env.WebhookInstallOptions = envtest.WebhookInstallOptions{ValidatingWebhooks: hooks, MaxTime: installWait}
	return nil
}

func (c *Cluster) startKCM(opts Options) error {
	dir := opts.StateDir
	if dir == "" {
		d, err := os.MkdirTemp("", "cairn-kcm-")
		if err != nil {
			return err
		}
		dir = d
	}
	out := opts.Out
	if out == nil {
		out = io.Discard
	}
	return c.startControllerManager(opts.BinDir, dir, out)
}

// WebhookOptions are the webhook server settings the API server was told to
// call (host, port and serving certificate directory).
func (c *Cluster) WebhookOptions() webhook.Options {
	o := c.env.WebhookInstallOptions
	return webhook.Options{Host: o.LocalServingHost, Port: o.LocalServingPort, CertDir: o.LocalServingCertDir}
}

// Kubeconfig returns a kubeconfig for a cluster-admin user.
func (c *Cluster) Kubeconfig(user string) ([]byte, error) {
	u, err := c.env.AddUser(envtest.User{Name: user, Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, fmt.Errorf("add user %s: %w", user, err)
	}
	return u.KubeConfig()
}

// Stop stops kube-controller-manager (when it runs), kube-apiserver and
// etcd and waits for them to exit.
func (c *Cluster) Stop() error {
	if c.stopKCM != nil {
		c.stopKCM()
	}
	return c.env.Stop()
}

// CRDs decodes Cairn's embedded CustomResourceDefinitions.
func CRDs() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	var out []*apiextensionsv1.CustomResourceDefinition
	err := fs.WalkDir(config.CRDs, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") {
			return err
		}
		return decodeAll(config.CRDs, path, func() any { return &apiextensionsv1.CustomResourceDefinition{} }, func(o any) {
			out = append(out, o.(*apiextensionsv1.CustomResourceDefinition))
		})
	})
	return out, err
}

// ValidatingWebhooks decodes Cairn's embedded webhook configuration.
func ValidatingWebhooks() ([]*admissionv1.ValidatingWebhookConfiguration, error) {
	var out []*admissionv1.ValidatingWebhookConfiguration
	err := decodeAll(config.Webhooks, "webhook/manifests.yaml", func() any { return &admissionv1.ValidatingWebhookConfiguration{} }, func(o any) {
		if w := o.(*admissionv1.ValidatingWebhookConfiguration); w.Kind == "ValidatingWebhookConfiguration" {
			out = append(out, w)
		}
	})
	return out, err
}

func decodeAll(fsys fs.FS, path string, newObj func() any, add func(any)) error {
	data, err := fs.ReadFile(fsys, path)
	if err != nil {
		return err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		obj := newObj()
		if err := dec.Decode(obj); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("decode %s: %w", path, err)
		}
		add(obj)
	}
}
