package testutil

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDevSuiteMissing: what a dev suite needs and lacks is named with how
// to get it, bin/ before PATH.
func TestDevSuiteMissing(t *testing.T) {
	RequireRoot(t)
	for _, tool := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		RequireTool(t, tool)
	}
	for _, tc := range []struct {
		opts DevSuiteOptions
		want string
	}{
		{DevSuiteOptions{Bin: []string{"no-such-server"}, Tools: []string{"no-such-tool"}}, "no-such-server not built: run `make tools`"},
		{DevSuiteOptions{Tools: []string{"sh", "no-such-tool"}}, "no-such-tool not installed: install no-such-tool"},
		{DevSuiteOptions{Tools: []string{"sh"}}, ""},
	} {
		require.Equal(t, tc.want, tc.opts.missing(), "%+v", tc.opts)
	}
}
