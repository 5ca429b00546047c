//go:build failpoints

package node

import (
	"context"
	"os"
)

// With CAIRN_FAILPOINT_COPY=stall a replica copy stops after its first
// chunk until it is cancelled, so a test can kill the agent mid-copy.
func init() {
	if os.Getenv("CAIRN_FAILPOINT_COPY") == "stall" {
		copyHook = func(ctx context.Context) { <-ctx.Done() }
	}
}
