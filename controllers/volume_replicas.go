package controllers

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/policies"
)

// ensureToken creates the volume's token Secret once: 32 random bytes, hex,
// owned by the Volume so it goes with it.
func (r *VolumeReconciler) ensureToken(ctx context.Context, s *volumeScope) (ctrl.Result, error) {
	sec := &corev1.Secret{}
	key := client.ObjectKey{Namespace: v1.SystemNamespace, Name: v1.TokenSecretName(s.vol.Name)}
	err := r.Get(ctx, key, sec)
	if !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return ctrl.Result{}, err
	}
	sec = &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name, Labels: map[string]string{v1.LabelVolume: s.vol.Name}},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{v1.TokenKey: []byte(hex.EncodeToString(b))},
	}
	if err := controllerutil.SetControllerReference(s.vol, sec, r.Scheme()); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, client.IgnoreAlreadyExists(r.Create(ctx, sec))
}

// ensureReplicas keeps eff.Replicas usable replicas on nodes the policy's
// nodeSelector admits: it places new ones for the missing (and for the
// misplaced), retires replicas lost past the replenish wait once the
// replacements exist, retires misplaced ones once as many admitted
// replicas are healthy, and removes the least healthy beyond the count.
func (r *VolumeReconciler) ensureReplicas(ctx context.Context, s *volumeScope) (ctrl.Result, error) {
	if s.vol.Spec.FromBackup != nil && s.vol.Status.RestoredBackup == "" || s.copying() && s.vol.Status.RestoredSnapshot == nil {
		return ctrl.Result{}, nil // placed once the backup or snapshot is chosen
	}
	usable, lost := s.classifyReplicas(r.Now())
	placed, moving := s.splitMisplaced(usable)
	want := int(s.eff.Replicas)
	if len(placed) < want {
		if err := r.placeReplicas(ctx, s, placed, len(usable), want); err != nil {
			return ctrl.Result{}, err
		}
	} else {
		setFlag(&s.vol.Status.Conditions, v1.ConditionReplicaScheduling, false, "", "", s.vol.Generation)
	}
	if len(usable) >= want {
		for _, rep := range lost {
			if err := r.retireReplica(ctx, s, rep, "lost past the replenish wait"); err != nil {
				return ctrl.Result{}, err
			}
		}
	}
	if err := r.retireMisplaced(ctx, s, placed, moving, want); err != nil {
		return ctrl.Result{}, err
	}
	s.reportMoving(moving, want)
	if extra := len(placed) - want; extra > 0 {
		for _, rep := range s.leastHealthy(placed)[:extra] {
			if err := r.retireReplica(ctx, s, rep, "the policy asks for fewer replicas"); err != nil {
				return ctrl.Result{}, err
			}
		}
	}
	var res ctrl.Result
	if !s.lostUntil.IsZero() {
		res.RequeueAfter = s.lostUntil.Sub(r.Now()) + time.Second
	}
	return res, nil
}

// misplaced is a replica that must move, and why.
type misplaced struct {
	rep *v1.Replica
	why string
}

// splitMisplaced separates the replicas that must move from the rest:
// those on nodes being evicted or that the policy's nodeSelector does not
// match (it changed, or the volume was placed before its policy arrived),
// and under zone spread all but the healthiest replica of a zone (the
// spread changed, or a node's zone did).
func (s *volumeScope) splitMisplaced(reps []*v1.Replica) (placed []*v1.Replica, moving []misplaced) {
	zones := map[string]bool{}
	for _, rep := range slices.Backward(s.leastHealthy(reps)) {
		node := s.nodes[rep.Spec.NodeID] // usable replicas are on known nodes (classifyReplicas)
		switch {
		case node.Spec.EvictionRequested:
			moving = append(moving, misplaced{rep, "its node is being evicted"})
		case !s.eff.Admits(node.Labels):
			moving = append(moving, misplaced{rep, "its node no longer matches the policy's nodeSelector"})
		case s.eff.Spread == v1.SpreadZone && zones[node.Status.Zone]:
			moving = append(moving, misplaced{rep, "another replica is in zone " + strconv.Quote(node.Status.Zone) + " (spread: zone)"})
		default:
			zones[node.Status.Zone] = true
			placed = append(placed, rep)
		}
	}
	return placed, moving
}

// retireMisplaced moves a volume off nodes its placement no longer admits
// without lowering its redundancy: the misplaced replicas go only once want
// admitted replicas are healthy in the engine. A detached volume has no
// engine to fill its new replicas, so it keeps the old ones until it is
// attached and the new ones are rebuilt.
func (r *VolumeReconciler) retireMisplaced(ctx context.Context, s *volumeScope, placed []*v1.Replica, moving []misplaced, want int) error {
	if len(moving) == 0 {
		return nil
	}
	healthy := 0
	for _, rep := range placed {
		if s.replicaMode(rep) == "healthy" {
			healthy++
		}
	}
	if healthy < want {
		return nil
	}
	for _, m := range moving {
		if err := r.retireReplica(ctx, s, m.rep, m.why); err != nil {
			return err
		}
	}
	return nil
}

// reportMoving sets condition ReplicasMoving while misplaced replicas wait
// for their replacements, saying which and why.
func (s *volumeScope) reportMoving(moving []misplaced, want int) {
	var parts []string
	for _, m := range moving {
		if m.rep.DeletionTimestamp.IsZero() { // retireReplica marks the ones it removed
			parts = append(parts, fmt.Sprintf("%s on %s (%s)", m.rep.Name, m.rep.Spec.NodeID, m.why))
		}
	}
	msg := ""
	if len(parts) > 0 {
		msg = fmt.Sprintf("%d replicas move once %d replicas are healthy elsewhere: %s", len(parts), want, strings.Join(parts, ", "))
		if s.vol.Spec.NodeID == "" {
			msg += "; the volume is detached, so they move when it is next attached"
		}
	}
	setFlag(&s.vol.Status.Conditions, v1.ConditionReplicasMoving, len(parts) > 0, "Misplaced", msg, s.vol.Generation)
}

// classifyReplicas splits the live replicas into usable ones and those lost
// past the replenish wait (their node not ready that long, or gone). It
// records in s.lostUntil when the next not-ready one will count as lost.
func (s *volumeScope) classifyReplicas(now time.Time) (usable, lost []*v1.Replica) {
	for i := range s.replicas {
		rep := &s.replicas[i]
		if !rep.DeletionTimestamp.IsZero() {
			continue
		}
		node := s.nodes[rep.Spec.NodeID]
		if node == nil {
			lost = append(lost, rep)
			continue
		}
		ready, since := nodeReady(node)
		deadline := since.Add(s.eff.ReplenishWait)
		switch {
		case ready:
			usable = append(usable, rep)
		case !now.Before(deadline):
			lost = append(lost, rep)
		default:
			usable = append(usable, rep)
			if s.lostUntil.IsZero() || deadline.Before(s.lostUntil) {
				s.lostUntil = deadline
			}
		}
	}
	return usable, lost
}

// placeReplicas creates Replica objects on nodes chosen by policies.Place
// until want replicas are on nodes that keep them (placed). Too few
// eligible nodes stall a volume that has no usable replica at all (usable
// counts misplaced ones too), and degrade one that has some (a new node
// becoming ready requeues it).
func (r *VolumeReconciler) placeReplicas(ctx context.Context, s *volumeScope, placed []*v1.Replica, usable, want int) error {
	var kept, taken []string
	for _, rep := range s.replicas {
		taken = append(taken, rep.Spec.NodeID)
	}
	for _, rep := range placed {
		kept = append(kept, rep.Spec.NodeID)
	}
	nodes, err := r.placementNodes(ctx, s)
	if err != nil {
		return err
	}
	picked, perr := policies.Place(s.eff, s.vol.Spec.Size.Value(), kept, taken, nodes, want)
	for _, node := range picked {
		if err := r.createReplica(ctx, s, node); err != nil {
			return err
		}
	}
	setFlag(&s.vol.Status.Conditions, v1.ConditionReplicaScheduling, perr != nil, "NotEnoughNodes", errString(perr), s.vol.Generation)
	if perr != nil && usable+len(picked) == 0 {
		s.out = outcome{stalled: true, reason: "NotEnoughNodes", message: perr.Error()}
	}
	return nil
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// placementNodes describes every CairnNode for policies.Place.
func (r *VolumeReconciler) placementNodes(ctx context.Context, s *volumeScope) ([]policies.Node, error) {
	var all v1.ReplicaList
	if err := r.List(ctx, &all); err != nil {
		return nil, err
	}
	count := map[string]int{}
	for _, rep := range all.Items {
		count[rep.Spec.NodeID]++
	}
	out := make([]policies.Node, 0, len(s.nodes))
	for _, n := range s.nodes {
		ready, _ := nodeReady(n)
		pn := policies.Node{Name: n.Name, Zone: n.Status.Zone, Labels: n.Labels, Ready: ready,
			Schedulable: n.Spec.Scheduling() == v1.NodeSchedulingOn, Replicas: count[n.Name]}
		for _, d := range n.Status.Disks {
			if d.Available != nil {
				pn.Available = max(pn.Available, d.Available.Value())
			}
		}
		out = append(out, pn)
	}
	return out, nil
}

func (r *VolumeReconciler) createReplica(ctx context.Context, s *volumeScope, node string) error {
	rep := &v1.Replica{
		ObjectMeta: metav1.ObjectMeta{
			Name:   replicaName(s.vol.Name, node),
			Labels: map[string]string{v1.LabelVolume: s.vol.Name},
		},
		Spec: v1.ReplicaSpec{VolumeName: s.vol.Name, NodeID: node, Size: s.vol.Spec.Size},
	}
	switch {
	case s.copying():
		src := *s.vol.Status.RestoredSnapshot
		rep.Spec.CopyFrom = &src
	// A standby's replicas are all filled from its backup: without an
	// engine, nothing would rebuild an empty one.
	case s.restoring() || (s.vol.Spec.Standby && s.vol.Spec.FromBackup != nil):
		src := *s.vol.Spec.FromBackup
		src.Backup = s.vol.Status.RestoredBackup
		rep.Spec.Restore = &src
	}
	if err := controllerutil.SetControllerReference(s.vol, rep, r.Scheme()); err != nil {
		return err
	}
	// The name depends only on volume and node, so a reconcile that runs on
	// a cache not yet showing this replica makes the same choice and gets
	// AlreadyExists instead of a second replica.
	if err := r.Create(ctx, rep); err != nil {
		return client.IgnoreAlreadyExists(err)
	}
	s.replicas = append(s.replicas, *rep)
	r.Recorder.Eventf(s.vol, rep, corev1.EventTypeNormal, "ReplicaScheduled", "Schedule", "replica %s placed on node %s", rep.Name, node)
	log.FromContext(ctx).Info("Replica scheduled", "replica", rep.Name, "node", node)
	return nil
}

// retireReplica deletes a Replica object. One on a node that is gone or
// not ready cannot be cleaned by its agent, so its data finalizer is
// dropped: the agent removes data of replicas without an object when it
// returns.
func (r *VolumeReconciler) retireReplica(ctx context.Context, s *volumeScope, rep *v1.Replica, why string) error {
	if node := s.nodes[rep.Spec.NodeID]; node == nil || !isReady(node) {
		patch := client.MergeFrom(rep.DeepCopy())
		if controllerutil.RemoveFinalizer(rep, v1.FinalizerReplicaData) {
			if err := r.Patch(ctx, rep, patch); client.IgnoreNotFound(err) != nil {
				return err
			}
		}
	}
	if err := r.Delete(ctx, rep); client.IgnoreNotFound(err) != nil {
		return err
	}
	r.Recorder.Eventf(s.vol, rep, corev1.EventTypeNormal, "ReplicaRemoved", "Remove", "replica %s on node %s removed: %s", rep.Name, rep.Spec.NodeID, why)
	log.FromContext(ctx).Info("Replica removed", "replica", rep.Name, "node", rep.Spec.NodeID, "reason", why)
	rep.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	return nil
}

// replicaName is VOLUME-r-HASH, HASH the first 10 hex digits of the
// node name's SHA-256 (the volume name cut to fit 253 characters).
func replicaName(vol, node string) string {
	sum := sha256.Sum256([]byte(node))
	suffix := "-r-" + hex.EncodeToString(sum[:5])
	return vol[:min(len(vol), 253-len(suffix))] + suffix
}

func isReady(n *v1.CairnNode) bool {
	ok, _ := nodeReady(n)
	return ok
}

// leastHealthy orders replicas worst first: by their mode in the engine
// (failed, stale, rebuilding, healthy), then newest first.
func (s *volumeScope) leastHealthy(reps []*v1.Replica) []*v1.Replica {
	rank := map[string]int{"failed": 0, "": 1, "stale": 1, "rebuilding": 2, "resyncing": 2, "healthy": 3}
	out := slices.Clone(reps)
	slices.SortStableFunc(out, func(a, b *v1.Replica) int {
		if d := rank[s.replicaMode(a)] - rank[s.replicaMode(b)]; d != 0 {
			return d
		}
		return b.CreationTimestamp.Compare(a.CreationTimestamp.Time)
	})
	return out
}

// replicaMode is the engine's view of a replica (its modes are keyed by
// address), or "" when detached or not yet a member.
func (s *volumeScope) replicaMode(rep *v1.Replica) string {
	if s.engine == nil || rep.Status.Address == "" {
		return ""
	}
	return s.engine.Status.ReplicaModes[rep.Status.Address]
}
