package policies

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

func policy(name string, prio int32, sel map[string]string, replicas int32) v1.VolumePolicy {
	p := v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	p.Spec.Priority, p.Spec.Replicas = prio, replicas
	if sel != nil {
		p.Spec.Selector = &metav1.LabelSelector{MatchLabels: sel}
	}
	return p
}

func TestEffectivePolicy(t *testing.T) {
	two := int32(2)
	gold := policy("gold", 0, map[string]string{"tier": "db"}, 3)
	gold.Spec.Placement = &v1.Placement{Spread: v1.SpreadZone, NodeSelector: map[string]string{"disk": "ssd"}}
	gold.Spec.ReplenishWait = &metav1.Duration{Duration: time.Minute}
	all := []v1.VolumePolicy{
		gold,
		policy("silver", 0, map[string]string{"tier": "db"}, 2),
		policy("bronze", 5, map[string]string{"tier": "web"}, 1),
		policy("plain", 0, nil, 4),
	}
	vol := func(ref string, lbls map[string]string, replicas *int32) *v1.Volume {
		v := &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "v", Labels: lbls}}
		v.Spec.PolicyRef, v.Spec.Replicas = v1.ObjectName(ref), replicas
		return v
	}
	for _, tc := range []struct {
		name   string
		vol    *v1.Volume
		policy string
		source Source
		tied   []string
		repl   int32
		err    error
	}{
		{"policyRef wins over selectors", vol("plain", map[string]string{"tier": "web"}, nil), "plain", FromPolicyRef, nil, 4, nil},
		{"missing policyRef", vol("gone", nil, nil), "", "", nil, 0, ErrPolicyNotFound},
		{"selector", vol("", map[string]string{"tier": "web"}, nil), "bronze", FromSelector, nil, 1, nil},
		{"tie goes to the first name and is reported", vol("", map[string]string{"tier": "db"}, nil), "gold", FromSelector, []string{"gold", "silver"}, 3, nil},
		{"override", vol("", map[string]string{"tier": "db"}, &two), "gold", FromSelector, []string{"gold", "silver"}, 2, nil},
		{"none", vol("", map[string]string{"tier": "x"}, nil), "", FromNone, nil, DefaultReplicas, nil},
	} {
		e, err := EffectivePolicy(tc.vol, all)
		if tc.err != nil {
			require.ErrorIs(t, err, tc.err, tc.name)
			continue
		}
		require.NoError(t, err, tc.name)
		require.Equal(t, tc.policy, e.Policy, tc.name)
		require.Equal(t, tc.source, e.Source, tc.name)
		require.Equal(t, tc.tied, e.Tied, tc.name)
		require.Equal(t, tc.repl, e.Replicas, tc.name)
	}
	e, err := EffectivePolicy(vol("gold", nil, nil), all)
	require.NoError(t, err)
	require.Equal(t, v1.SpreadZone, e.Spread)
	require.Equal(t, time.Minute, e.ReplenishWait)
	require.Equal(t, map[string]string{"disk": "ssd"}, e.NodeSelector)
}

func TestPlace(t *testing.T) {
	nodes := []Node{
		{Name: "n1", Zone: "a", Ready: true, Schedulable: true, Available: 100, Replicas: 2},
		{Name: "n2", Zone: "a", Ready: true, Schedulable: true, Available: 100},
		{Name: "n3", Zone: "b", Ready: true, Schedulable: true, Available: 50, Labels: map[string]string{"disk": "ssd"}},
		{Name: "n4", Zone: "c", Ready: false, Schedulable: true, Available: 100},
		{Name: "n5", Zone: "c", Ready: true, Schedulable: true, Available: 10},
	}
	node := Effective{Spread: v1.SpreadNode}
	zone := Effective{Spread: v1.SpreadZone}
	for _, tc := range []struct {
		name    string
		e       Effective
		size    int64
		current []string
		leaving []string
		want    int
		out     []string
		err     string
	}{
		{"least loaded first", node, 20, nil, nil, 3, []string{"n2", "n3", "n1"}, ""},
		{"never two on one node", node, 20, []string{"n2"}, nil, 3, []string{"n3", "n1"}, ""},
		{"enough already", node, 20, []string{"n1", "n2"}, nil, 2, nil, ""},
		{"space", node, 60, nil, nil, 3, []string{"n2", "n1"}, "2 lack the space"},
		{"not ready skipped", node, 5, nil, nil, 5, []string{"n2", "n3", "n5", "n1"}, "1 not ready"},
		{"selector", Effective{Spread: v1.SpreadNode, NodeSelector: map[string]string{"disk": "ssd"}}, 5, nil, nil, 2, []string{"n3"}, "do not match the nodeSelector"},
		{"zones", zone, 5, nil, nil, 3, []string{"n2", "n3", "n5"}, ""},
		{"zone used by current", zone, 5, []string{"n1"}, nil, 3, []string{"n3", "n5"}, ""},
		{"too few zones", zone, 5, []string{"n1", "n3"}, nil, 4, []string{"n5"}, "share a zone"},
		{"leaving node takes none", node, 20, []string{"n2", "n3"}, []string{"n3"}, 2, []string{"n1"}, ""},
		{"leaving frees its zone", zone, 5, []string{"n1", "n3"}, []string{"n1"}, 2, []string{"n2"}, ""},
		{"leaving zone reused", zone, 5, []string{"n2", "n3"}, []string{"n2"}, 3, []string{"n5", "n1"}, ""},
	} {
		kept := slices.DeleteFunc(slices.Clone(tc.current), func(n string) bool { return slices.Contains(tc.leaving, n) })
		out, err := Place(tc.e, tc.size, kept, tc.current, nodes, tc.want)
		require.Equal(t, tc.out, out, tc.name)
		if tc.err == "" {
			require.NoError(t, err, tc.name)
		} else {
			require.ErrorIs(t, err, ErrNoPlacement, tc.name)
			require.ErrorContains(t, err, tc.err, tc.name)
		}
	}
}
