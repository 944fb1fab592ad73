package sandbox

import (
	"fmt"
	"hash/fnv"
)

// IDRangeSize is how many ids a sandbox's user namespace maps: 0 to 65535,
// every id an image's files and users use.
const IDRangeSize = 1 << 16

// The host ids sandboxes' user namespaces map: idSlots ranges of
// IDRangeSize ids each, from idPoolStart (2^30) up to 2^31, far above the
// ids of the guest's users and of /etc/subuid's customary ranges.
const (
	idPoolStart = 1 << 30
	idSlots     = (1 << 30) / IDRangeSize
)

// allocIDMapLocked gives a new sandbox a range no other sandbox of this
// agent holds. The search starts after the range given last, so a range
// is reused as late as possible (files a removed sandbox left in a
// mounted directory stay its own), and, the first time, at a place
// derived from the state dir, so two agents on one machine are unlikely
// to hand out the same ranges. m.mu is held.
func (m *Manager) allocIDMapLocked() (IDMap, error) {
	used := make(map[uint32]bool, len(m.boxes))
	for _, sb := range m.boxes {
		if sb.rec.IDMap != nil {
			used[sb.rec.IDMap.HostID] = true
		}
	}
	if !m.idSlotSet {
		h := fnv.New32a()
		h.Write([]byte(m.cfg.StateDir))
		m.idSlot = h.Sum32() % idSlots
		m.idSlotSet = true
	}
	for range idSlots {
		m.idSlot = (m.idSlot + 1) % idSlots
		host := uint32(idPoolStart + m.idSlot*IDRangeSize)
		if !used[host] {
			return IDMap{HostID: host, Size: IDRangeSize}, nil
		}
	}
	return IDMap{}, fmt.Errorf("every one of the %d user namespace id ranges is held by a sandbox: %w", idSlots, ErrBusy)
}
