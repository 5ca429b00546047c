package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairnstore/cairn/controllers"
)

// globalOptions are the flags every command shares.
type globalOptions struct {
	kubeconfig string
	context    string
	output     string
}

func (o *globalOptions) addFlags(cmd *cobra.Command) {
	fl := cmd.PersistentFlags()
	fl.StringVar(&o.kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	fl.StringVar(&o.context, "context", "", "the kubeconfig context to use")
	fl.StringVarP(&o.output, "output", "o", "table", "output format: table, json or yaml")
}

// restConfig loads the kubeconfig as kubectl does: --kubeconfig, else
// $KUBECONFIG, else ~/.kube/config, with --context overriding the current
// context.
func (o *globalOptions) restConfig() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: o.context}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
	switch {
	case clientcmd.IsEmptyConfig(err):
		return nil, errors.New("no kubeconfig: pass --kubeconfig or set KUBECONFIG")
	case err != nil:
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.Timeout = 30 * time.Second
	cfg.UserAgent = "cairnctl"
	return cfg, nil
}

// client is a client of the cluster with Cairn's and Kubernetes' types.
func (o *globalOptions) client() (client.WithWatch, error) {
	cfg, err := o.restConfig()
	if err != nil {
		return nil, err
	}
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: controllers.NewScheme()})
	if err != nil {
		return nil, userError(fmt.Errorf("connect to %s: %w", cfg.Host, err))
	}
	return c, nil
}

// userError turns the errors a user causes into a message saying what to
// check: an unreachable cluster, a cluster without Cairn, missing rights.
func userError(err error) error {
	var uerr *url.Error
	var nerr *net.OpError
	switch {
	case meta.IsNoMatchError(err):
		return errors.New("the cluster has no storage.cairn.dev API: Cairn is not installed there (its CRDs are missing)")
	case errors.As(err, &uerr):
		return fmt.Errorf("cannot reach the Kubernetes API server at %s: %v", hostOf(uerr.URL), rootCause(uerr.Err))
	case errors.As(err, &nerr):
		return fmt.Errorf("cannot reach the Kubernetes API server: %v", rootCause(err))
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("the API server rejected the credentials (Unauthorized): check the kubeconfig's user")
	case apierrors.IsForbidden(err):
		return fmt.Errorf("not allowed: %w", err)
	}
	return err
}

func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	return u.Scheme + "://" + u.Host
}

// rootCause is the innermost wrapped error (e.g. "connection refused").
func rootCause(err error) error {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err
		}
		err = next
	}
}

// oneLine makes an error one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}
