package policies

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// Defaults for a volume no policy governs.
const (
	DefaultReplicas      = 3
	DefaultReplenishWait = 10 * time.Minute
)

var (
	// ErrPolicyNotFound: the volume's policyRef names no VolumePolicy.
	ErrPolicyNotFound = errors.New("policies: policy not found")
	// ErrBadSelector: a policy's selector cannot be parsed.
	ErrBadSelector = errors.New("policies: invalid selector")
)

// Source says how a volume got its effective policy.
type Source string

// Sources of an effective policy.
const (
	FromPolicyRef Source = "policyRef"
	FromSelector  Source = "selector"
	FromNone      Source = "none"
)

// Effective is the policy a volume runs under, resolved from its policyRef
// or the selectors of every policy, with the volume's own overrides.
type Effective struct {
	// Policy is the governing policy's name; empty when none governs.
	Policy string
	Source Source
	// Tied lists every policy that matched with the winner's priority,
	// winner included, when more than one did (the alphabetically first
	// wins; callers report the tie).
	Tied          []string
	Replicas      int32
	Spread        v1.SpreadDomain
	NodeSelector  map[string]string
	ReplenishWait time.Duration
}

// EffectivePolicy resolves the policy of vol among all policies. A policyRef
// wins over selectors; among matching selectors the highest priority wins,
// then the alphabetically first name. vol.spec.replicas overrides the count.
func EffectivePolicy(vol *v1.Volume, all []v1.VolumePolicy) (Effective, error) {
	var p *v1.VolumePolicy
	src := FromNone
	var tied []string
	if ref := string(vol.Spec.PolicyRef); ref != "" {
		i := slices.IndexFunc(all, func(p v1.VolumePolicy) bool { return p.Name == ref })
		if i < 0 {
			return Effective{}, fmt.Errorf("%w: %s", ErrPolicyNotFound, ref)
		}
		p, src = &all[i], FromPolicyRef
	} else {
		var err error
		if p, tied, err = bySelector(vol.Labels, all); err != nil {
			return Effective{}, err
		}
		if p != nil {
			src = FromSelector
		}
	}
	e := fromPolicy(p)
	e.Source, e.Tied = src, tied
	if vol.Spec.Replicas != nil {
		e.Replicas = *vol.Spec.Replicas
	}
	return e, nil
}

// bySelector picks the winning policy whose selector matches lbls.
func bySelector(lbls map[string]string, all []v1.VolumePolicy) (*v1.VolumePolicy, []string, error) {
	var match []*v1.VolumePolicy
	for i := range all {
		p := &all[i]
		if p.Spec.Selector == nil || p.DeletionTimestamp != nil {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: policy %s: %v", ErrBadSelector, p.Name, err)
		}
		if !sel.Empty() && sel.Matches(labels.Set(lbls)) {
			match = append(match, p)
		}
	}
	if len(match) == 0 {
		return nil, nil, nil
	}
	slices.SortFunc(match, func(a, b *v1.VolumePolicy) int {
		if a.Spec.Priority != b.Spec.Priority {
			return int(b.Spec.Priority - a.Spec.Priority)
		}
		return strings.Compare(a.Name, b.Name)
	})
	var tied []string
	for _, p := range match {
		if p.Spec.Priority == match[0].Spec.Priority {
			tied = append(tied, p.Name)
		}
	}
	if len(tied) < 2 {
		tied = nil
	}
	return match[0], tied, nil
}

func fromPolicy(p *v1.VolumePolicy) Effective {
	e := Effective{Replicas: DefaultReplicas, Spread: v1.SpreadNode, ReplenishWait: DefaultReplenishWait}
	if p == nil {
		return e
	}
	e.Policy = p.Name
	if p.Spec.Replicas > 0 {
		e.Replicas = p.Spec.Replicas
	}
	if pl := p.Spec.Placement; pl != nil {
		if pl.Spread != "" {
			e.Spread = pl.Spread
		}
		e.NodeSelector = pl.NodeSelector
	}
	if p.Spec.ReplenishWait != nil {
		e.ReplenishWait = p.Spec.ReplenishWait.Duration
	}
	return e
}
