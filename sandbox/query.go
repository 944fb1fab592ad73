package sandbox

// Queries: a sandbox's Info, and the list.

import (
	"cmp"
	"maps"
	"slices"
)

// Get returns a sandbox's info.
func (m *Manager) Get(id string) (Info, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sb, err := m.lookupLocked(id)
	if err != nil {
		return Info{}, err
	}
	return m.infoLocked(sb), nil
}

// List returns the sandboxes that match f, oldest first.
func (m *Manager) List(f Filter) []Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	boxes := slices.Collect(maps.Values(m.boxes))
	slices.SortFunc(boxes, func(a, b *sandbox) int {
		return cmp.Or(a.rec.CreatedAt.Compare(b.rec.CreatedAt), cmp.Compare(a.seq, b.seq))
	})
	out := []Info{}
	for _, sb := range boxes {
		if f.State != "" && sb.rec.State != f.State {
			continue
		}
		if labelsMatch(sb.rec.Spec.Labels, f.Labels) {
			out = append(out, m.infoLocked(sb))
		}
	}
	return out
}

// lookupLocked finds a sandbox; m.mu is held.
func (m *Manager) lookupLocked(id string) (*sandbox, error) {
	sb, ok := m.boxes[id]
	if !ok {
		return nil, Errorf(ErrNotFound, "sandbox %q", id)
	}
	return sb, nil
}

// infoLocked is a sandbox's Info; m.mu is held.
func (m *Manager) infoLocked(sb *sandbox) Info {
	r := sb.rec
	info := Info{
		ID:           sb.id,
		State:        r.State,
		Labels:       maps.Clone(r.Spec.Labels),
		Limits:       r.Spec.Limits,
		NetworkMode:  r.Spec.NetworkMode,
		IPAddress:    r.IPAddress,
		Gateway:      r.Gateway,
		CreatedAt:    r.CreatedAt,
		ReadyAt:      r.ReadyAt,
		LastExitedAt: r.LastExitedAt,
		Error:        r.Error,
		Security: SecurityInfo{
			UserNamespace:   r.IDMap != nil,
			ReadOnlyRootfs:  r.Spec.Security.ReadOnlyRootfs,
			NoNewPrivileges: true,
			Seccomp:         true,
			Capabilities:    DefaultCapabilities(),
		},
	}
	if r.IDMap != nil {
		info.Security.IDMap = *r.IDMap
	}
	if r.LastExitCode != nil {
		code := *r.LastExitCode
		info.LastExitCode = &code
	}
	return info
}
