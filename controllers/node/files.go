package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/durable"
	"github.com/cairnstore/cairn/internal/netx"
	"github.com/cairnstore/cairn/internal/secretfile"
)

// errNoToken: the volume's token Secret is missing or holds no usable token.
var errNoToken = errors.New("node: volume token not available")

// ensureTokenFile writes the volume's token from its Secret to a 0600 file
// in the 0700 run directory (rewritten only when it changed) and returns the
// path. The token never leaves the Secret, the file and the children.
func (a *Agent) ensureTokenFile(ctx context.Context, r client.Reader, vol string) (string, error) {
	t, err := volumeToken(ctx, r, vol)
	if err != nil {
		return "", err
	}
	tok := []byte(t)
	path := a.tokenFile(vol)
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(bytes.TrimSpace(cur), tok) {
		return path, nil
	}
	if err := writePrivate(path, append(tok, '\n')); err != nil {
		return "", fmt.Errorf("write token file for volume %s: %w", vol, err)
	}
	return path, nil
}

// volumeToken reads the volume's token from its Secret.
func volumeToken(ctx context.Context, r client.Reader, vol string) (string, error) {
	var s corev1.Secret
	key := client.ObjectKey{Namespace: SystemNamespace, Name: cairnv1.TokenSecretName(vol)}
	if err := r.Get(ctx, key, &s); err != nil {
		if apierrors.IsNotFound(err) {
			return "", fmt.Errorf("%w: Secret %s/%s not found", errNoToken, key.Namespace, key.Name)
		}
		return "", fmt.Errorf("read token Secret %s/%s: %w", key.Namespace, key.Name, err)
	}
	tok := bytes.TrimSpace(s.Data[TokenKey])
	if err := secretfile.CheckToken(string(tok)); err != nil {
		return "", fmt.Errorf("%w: Secret %s/%s key %q: %v", errNoToken, key.Namespace, key.Name, TokenKey, err)
	}
	return string(tok), nil
}

// writePrivate writes a 0600 file durably (temp file, fsync, rename).
func writePrivate(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return durable.SyncDir(filepath.Dir(path))
}

// replicaState is what the agent keeps about a replica across restarts.
type replicaState struct {
	// Port the replica listens on, chosen once.
	Port int `json:"port"`
	// Size the replica was created with: a restarted replica opens its data
	// with it even if spec.size changed (growing needs a data-plane resize).
	Size int64 `json:"size"`
}

// loadReplicaState returns the replica's port and creation size, choosing
// a free port and recording size the first time, in DIR/state/<replica>.json,
// so the address survives process and agent restarts.
func (a *Agent) loadReplicaState(name string, size int64) (replicaState, error) {
	path := a.stateFile(name)
	var st replicaState
	b, err := os.ReadFile(path)
	if err == nil {
		if err := json.Unmarshal(b, &st); err == nil && st.Port > 0 && st.Port < 65536 && st.Size > 0 {
			return st, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return st, err
	}
	taken, err := a.recordedPorts()
	if err != nil {
		return st, err
	}
	p, err := a.ports.pick(name, taken)
	if err != nil {
		return st, err
	}
	st = replicaState{Port: p, Size: size}
	b, err = json.Marshal(st)
	if err != nil {
		return st, err
	}
	return st, writePrivate(path, append(b, '\n'))
}

// recordedPorts are the ports of every replica in DIR/state.
func (a *Agent) recordedPorts() (map[int]bool, error) {
	entries, err := os.ReadDir(a.stateDir())
	if err != nil {
		return nil, err
	}
	out := map[int]bool{}
	for _, e := range entries {
		var st replicaState
		if b, err := os.ReadFile(filepath.Join(a.stateDir(), e.Name())); err == nil && json.Unmarshal(b, &st) == nil {
			out[st.Port] = true
		}
	}
	return out, nil
}

// reachable reports whether the replica address accepts connections.
func reachable(ctx context.Context, addr string) bool {
	return netx.Listening(ctx, addr, 500*time.Millisecond)
}

// removeTokenIfUnused deletes the volume's token file once no Replica or
// Engine of the volume on this node remains that is not being deleted
// (whichever of them is deleted last removes it).
func (a *Agent) removeTokenIfUnused(ctx context.Context, c client.Reader, vol string) error {
	var reps cairnv1.ReplicaList
	if err := c.List(ctx, &reps); err != nil {
		return err
	}
	for _, o := range reps.Items {
		if o.Spec.VolumeName == vol && o.Spec.NodeID == a.opts.Name && o.DeletionTimestamp.IsZero() {
			return nil
		}
	}
	var eng cairnv1.Engine
	err := c.Get(ctx, client.ObjectKey{Name: vol}, &eng)
	if err == nil && eng.Spec.NodeID == a.opts.Name && eng.DeletionTimestamp.IsZero() {
		return nil
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if err := os.Remove(a.tokenFile(vol)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
