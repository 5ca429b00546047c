package engine

// Robustness summarises a volume's redundancy.
type Robustness string

const (
	// Healthy: every configured replica is healthy.
	Healthy Robustness = "healthy"
	// Degraded: I/O continues with fewer healthy replicas than configured.
	Degraded Robustness = "degraded"
	// Faulted: no healthy replica; I/O fails.
	Faulted Robustness = "faulted"
)

// ReplicaStatus is one replica's state.
type ReplicaStatus struct {
	Address    string      `json:"address"`
	Mode       ReplicaMode `json:"mode"`
	Reason     string      `json:"reason,omitempty"`
	Generation uint64      `json:"generation"`
	Local      bool        `json:"local,omitempty"`
	// RebuildCopied and RebuildTotal are bytes of a running rebuild.
	RebuildCopied int64 `json:"rebuildCopied,omitempty"`
	RebuildTotal  int64 `json:"rebuildTotal,omitempty"`
}

// Status is the volume's state as reported on the control endpoint.
type Status struct {
	Volume      string          `json:"volume"`
	Size        int64           `json:"size"`
	Generation  uint64          `json:"generation"`
	Robustness  Robustness      `json:"robustness"`
	Replicas    []ReplicaStatus `json:"replicas"`
	LastRebuild *RebuildResult  `json:"lastRebuild,omitempty"`
	LastResync  *ResyncResult   `json:"lastResync,omitempty"`
}

// Status reports the volume's replicas and robustness.
func (v *Volume) Status() Status {
	v.mu.RLock()
	st := Status{Volume: v.cfg.Name, Size: v.Size(), Generation: v.gen}
	healthy := 0
	for _, m := range v.members {
		if m.mode == ModeHealthy {
			healthy++
		}
		rs := ReplicaStatus{Address: m.addr, Mode: m.mode, Reason: m.reason, Generation: m.gen, Local: m.local}
		if m.mode == ModeRebuilding || m.mode == ModeResyncing {
			rs.RebuildCopied, rs.RebuildTotal = m.copied.Load(), m.toCopy.Load()
		}
		st.Replicas = append(st.Replicas, rs)
	}
	v.mu.RUnlock()
	switch {
	case healthy == 0:
		st.Robustness = Faulted
	case healthy < len(st.Replicas):
		st.Robustness = Degraded
	default:
		st.Robustness = Healthy
	}
	v.rebuildMu.Lock()
	st.LastRebuild, st.LastResync = v.lastRebuild, v.lastResync
	v.rebuildMu.Unlock()
	return st
}
