package scheduler

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/targets"
)

// targetPins answers whether a backup is pinned in its target by a DR
// standby of another cluster (backupstore pins), reading each target and
// volume's pins once per prune. A target that cannot be read pins
// nothing here: the target's Delete checks the pins itself.
type targetPins struct {
	ctx    context.Context
	r      *Reconciler
	pinned map[[2]string]map[string]bool // target, volume -> backup ids
}

func (r *Reconciler) newTargetPins(ctx context.Context) *targetPins {
	return &targetPins{ctx: ctx, r: r, pinned: map[[2]string]map[string]bool{}}
}

// has reports whether the Backup behind o is pinned.
func (p *targetPins) has(o *runObject) bool {
	b, ok := o.obj.(*v1.Backup)
	if !ok || p.r.Stores == nil || o.backupID == "" {
		return false
	}
	key := [2]string{string(b.Spec.BackupTargetRef), b.Spec.VolumeName}
	ids, seen := p.pinned[key]
	if !seen {
		ids = p.read(key[0], key[1])
		p.pinned[key] = ids
	}
	return ids[o.backupID]
}

func (p *targetPins) read(target, volume string) map[string]bool {
	ids := map[string]bool{}
	store, err := p.r.Stores.Open(p.ctx, p.r.Client, target, targets.DefaultTimeout)
	if err == nil {
		pins, perr := store.Pins(p.ctx, volume)
		for _, pin := range pins {
			ids[pin.Backup] = true
		}
		err = perr
	}
	if err != nil {
		log.FromContext(p.ctx).V(1).Info("Pins not read; the target's Delete checks them", "target", target, "volume", volume, "error", err.Error())
	}
	return ids
}
