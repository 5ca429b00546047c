package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

func newNodeCmd(o *globalOptions) *cobra.Command {
	node := &cobra.Command{Use: "node", Short: "List nodes; drain a node's replicas for maintenance, and undo it"}
	node.AddCommand(o.newShowCmd("list", "Show every CairnNode: readiness, zone, scheduling, replicas", o.printNodes, &v1.CairnNodeList{}, &v1.ReplicaList{}),
		newDrainCmd(o), newUndrainCmd(o))
	return node
}

// nodeRow is one node in `cairnctl node list`.
type nodeRow struct {
	Name       string `json:"name"`
	Ready      string `json:"ready"`
	Zone       string `json:"zone,omitempty"`
	Scheduling string `json:"scheduling"`
	Replicas   int    `json:"replicas"`
}

func (o *globalOptions) printNodes(ctx context.Context, c client.Client, w io.Writer) error {
	var nodes v1.CairnNodeList
	if err := c.List(ctx, &nodes); err != nil {
		return err
	}
	var reps v1.ReplicaList
	if err := c.List(ctx, &reps); err != nil {
		return err
	}
	count := map[string]int{}
	for _, r := range reps.Items {
		if r.DeletionTimestamp.IsZero() {
			count[r.Spec.NodeID]++
		}
	}
	rows := []nodeRow{}
	t := &table{header: []string{"NODE", "READY", "ZONE", "SCHEDULING", "REPLICAS"}}
	for _, n := range nodes.Items {
		r := nodeRow{Name: n.Name, Ready: conditionStatus(n.Status.Conditions, v1.ConditionReady), Zone: n.Status.Zone,
			Scheduling: n.Spec.Scheduling(), Replicas: count[n.Name]}
		rows = append(rows, r)
		t.add(r.Name, r.Ready, orDash(r.Zone), r.Scheduling, fmt.Sprint(r.Replicas))
	}
	return o.print(w, rows, t)
}

func newDrainCmd(o *globalOptions) *cobra.Command {
	var waitFlag bool
	cmd := &cobra.Command{
		Use:   "drain NODE",
		Short: "Move every replica off a node (spec.evictionRequested): each is replaced elsewhere first",
		Long: "Sets spec.evictionRequested on the CairnNode. The manager places a replacement for each of the node's\n" +
			"replicas on another node and removes the old one once its volume has all its replicas healthy\n" +
			"elsewhere; no new replica goes to the node meanwhile. A detached volume keeps its replica there until\n" +
			"it is next attached. With --wait it shows the replicas left until none can move now.",
		Args: cobra.ExactArgs(1),
		RunE: o.withClient(func(cmd *cobra.Command, c client.WithWatch, args []string) error {
			if err := setEviction(cmd.Context(), c, args[0], true); err != nil {
				return userError(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %s: eviction requested; its replicas move to other nodes\n", args[0])
			if !waitFlag {
				return nil
			}
			return userError(waitDrained(cmd.Context(), c, cmd.OutOrStdout(), args[0]))
		}),
	}
	cmd.Flags().BoolVar(&waitFlag, "wait", false, "wait until every replica that can move now has moved, showing progress")
	return cmd
}

func newUndrainCmd(o *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "undrain NODE",
		Short: "Clear spec.evictionRequested: the node takes replicas again (moved ones stay where they are)",
		Args:  cobra.ExactArgs(1),
		RunE: o.withClient(func(cmd *cobra.Command, c client.WithWatch, args []string) error {
			if err := setEviction(cmd.Context(), c, args[0], false); err != nil {
				return userError(err)
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "node %s: eviction cleared\n", args[0])
			return err
		}),
	}
}

func setEviction(ctx context.Context, c client.Client, name string, on bool) error {
	n := &v1.CairnNode{}
	if err := c.Get(ctx, client.ObjectKey{Name: name}, n); err != nil {
		return err
	}
	patch := client.MergeFrom(n.DeepCopy())
	n.Spec.EvictionRequested = on
	return c.Patch(ctx, n, patch)
}

// drainState is what is left on a draining node.
type drainState struct {
	moving  int
	waiting []string // volumes detached: their replica moves at the next attach
	stuck   []string // "volume: why" for volumes that cannot place a replacement
}

// waitDrained prints the node's replicas left whenever the counts change,
// until every replica has moved or only ones that cannot move now remain.
func waitDrained(ctx context.Context, c client.Client, w io.Writer, node string) error {
	last := ""
	var st drainState
	err := wait.PollUntilContextCancel(ctx, pollEvery, true, func(ctx context.Context) (bool, error) {
		var err error
		if st, err = drainStateOf(ctx, c, node); err != nil {
			return false, err
		}
		line := fmt.Sprintf("node %s: %d replicas left (%d moving)", node, st.moving+len(st.waiting)+len(st.stuck), st.moving)
		if line != last {
			fmt.Fprintln(w, line)
			last = line
		}
		return st.moving == 0, nil
	})
	if err != nil {
		return err
	}
	if len(st.waiting) > 0 {
		fmt.Fprintf(w, "node %s: %d replicas of detached volumes move when they are next attached: %s\n", node, len(st.waiting), strings.Join(st.waiting, ", "))
	}
	if len(st.stuck) > 0 {
		return fmt.Errorf("node %s: %d replicas cannot move: %s", node, len(st.stuck), strings.Join(st.stuck, "; "))
	}
	_, err = fmt.Fprintf(w, "node %s: drained\n", node)
	return err
}

// drainStateOf sorts the node's live replicas by what keeps them there.
func drainStateOf(ctx context.Context, c client.Client, node string) (drainState, error) {
	var st drainState
	var reps v1.ReplicaList
	if err := c.List(ctx, &reps); err != nil {
		return st, err
	}
	for _, r := range reps.Items {
		if r.Spec.NodeID != node || !r.DeletionTimestamp.IsZero() {
			continue
		}
		vol := &v1.Volume{}
		if err := c.Get(ctx, client.ObjectKey{Name: r.Spec.VolumeName}, vol); err != nil {
			return st, fmt.Errorf("volume %s of replica %s: %w", r.Spec.VolumeName, r.Name, err)
		}
		// Until the manager has looked at the volume (one of the two
		// conditions), its replica counts as moving.
		switch sched := meta.FindStatusCondition(vol.Status.Conditions, v1.ConditionReplicaScheduling); {
		case sched != nil && sched.Status == metav1.ConditionTrue:
			st.stuck = append(st.stuck, vol.Name+": "+sched.Message)
		case vol.Spec.NodeID == "" && meta.IsStatusConditionTrue(vol.Status.Conditions, v1.ConditionReplicasMoving):
			st.waiting = append(st.waiting, vol.Name)
		default:
			st.moving++
		}
	}
	slices.Sort(st.waiting)
	slices.Sort(st.stuck)
	return st, nil
}
