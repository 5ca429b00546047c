package policies

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// ErrNoPlacement: not enough nodes satisfy the placement rules.
var ErrNoPlacement = errors.New("policies: not enough eligible nodes")

// Node is what placement knows about a node.
type Node struct {
	Name   string
	Zone   string
	Labels map[string]string
	// Ready: the node agent's heartbeat is current.
	Ready bool
	// Schedulable: the node accepts new replicas.
	Schedulable bool
	// Available bytes on its disk; Replicas it already holds.
	Available int64
	Replicas  int
}

// Place picks new nodes for a volume of size bytes until want replicas
// are on nodes that keep them. kept are the nodes whose replicas of the
// volume stay; taken, a superset, every node holding one (also replicas
// that are going: lost, misplaced, deleted). A node may take a replica
// when it is ready, schedulable, matches the selector, has the space and is
// not taken; with zone spread its zone must hold no kept replica either.
// Among eligible nodes the least loaded go first (fewest replicas, most
// space, then name), so placement is deterministic. It returns
// ErrNoPlacement, with the reason, when there are too few.
func Place(e Effective, size int64, kept, taken []string, nodes []Node, want int) ([]string, error) {
	need := want - len(kept)
	if need <= 0 {
		return nil, nil
	}
	usedNode := map[string]bool{}
	usedZone := map[string]bool{}
	for _, n := range nodes {
		usedNode[n.Name] = slices.Contains(taken, n.Name)
		if slices.Contains(kept, n.Name) {
			usedZone[n.Zone] = true
		}
	}
	var cand []Node
	var why rejectCounts
	for _, n := range nodes {
		if ok := why.eligible(n, e, size, usedNode); ok {
			cand = append(cand, n)
		}
	}
	slices.SortFunc(cand, func(a, b Node) int {
		switch {
		case a.Replicas != b.Replicas:
			return a.Replicas - b.Replicas
		case a.Available != b.Available:
			if a.Available > b.Available {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	var out []string
	for _, n := range cand {
		if len(out) == need {
			break
		}
		if e.Spread == v1.SpreadZone {
			if usedZone[n.Zone] {
				why.zone++
				continue
			}
			usedZone[n.Zone] = true
		}
		out = append(out, n.Name)
	}
	if len(out) < need {
		return out, fmt.Errorf("%w: %d more replicas needed, %d nodes eligible (%s)", ErrNoPlacement, need, len(out), why)
	}
	return out, nil
}

// rejectCounts counts why nodes were passed over, for the error message.
type rejectCounts struct{ notReady, selector, space, taken, zone int }

func (r *rejectCounts) eligible(n Node, e Effective, size int64, used map[string]bool) bool {
	switch {
	case used[n.Name]:
		r.taken++
	case !n.Ready || !n.Schedulable:
		r.notReady++
	case !matches(e.NodeSelector, n.Labels):
		r.selector++
	case n.Available < size:
		r.space++
	default:
		return true
	}
	return false
}

func (r rejectCounts) String() string {
	var parts []string
	for _, c := range []struct {
		n    int
		what string
	}{
		{r.taken, "already hold a replica"}, {r.notReady, "not ready or not schedulable"},
		{r.selector, "do not match the nodeSelector"}, {r.space, "lack the space"},
		{r.zone, "share a zone with another replica"},
	} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	if len(parts) == 0 {
		return "no nodes"
	}
	return strings.Join(parts, ", ")
}

// Admits reports whether a node with labels matches the nodeSelector
// (placement keeps replicas only on such nodes).
func (e Effective) Admits(labels map[string]string) bool { return matches(e.NodeSelector, labels) }

func matches(sel, lbls map[string]string) bool {
	for k, v := range sel {
		if lbls[k] != v {
			return false
		}
	}
	return true
}
