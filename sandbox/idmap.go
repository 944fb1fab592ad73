package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// DefaultIDRangeDir is where the agents of a machine claim id ranges when
// Config.IDRangeDir does not say. It is on tmpfs: after a reboot each agent
// claims the ranges of its records again as it starts (reclaimRange), and
// one another agent took first is reported as a collision.
const DefaultIDRangeDir = "/run/arcbox/idranges"

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

// allocIDMapLocked gives a new sandbox a range no other sandbox holds, of
// this agent or of another on the machine (claimRange). The search starts
// after the range given last, so a range is reused as late as possible
// (files a removed sandbox left in a mounted directory stay its own), and,
// the first time, at a place derived from the state dir, so agents rarely
// meet. m.mu is held (a claim is a small file on tmpfs).
func (m *Manager) allocIDMapLocked() (IDMap, error) {
	used := m.heldRangesLocked()
	for range idSlots {
		m.idSlot = (m.idSlot + 1) % idSlots
		host := uint32(idPoolStart + m.idSlot*IDRangeSize)
		if used[host] {
			continue
		}
		ok, err := m.claimRange(host)
		if err != nil {
			return IDMap{}, err
		}
		if ok {
			return IDMap{HostID: host, Size: IDRangeSize}, nil
		}
	}
	return IDMap{}, Errorf(ErrBusy, "every one of the %d user namespace id ranges is held by a sandbox", idSlots)
}

// nextIDMapLocked is the range allocIDMapLocked would most likely give
// next: the first after the one given last that no sandbox of this agent
// holds. Another agent's claim can still make it pass that one by; the
// zero IDMap when none is free. m.mu is held.
func (m *Manager) nextIDMapLocked() IDMap {
	used := m.heldRangesLocked()
	slot := m.idSlot
	for range idSlots {
		slot = (slot + 1) % idSlots
		if host := uint32(idPoolStart + slot*IDRangeSize); !used[host] {
			return IDMap{HostID: host, Size: IDRangeSize}
		}
	}
	return IDMap{}
}

// heldRangesLocked is the first host id of each range a sandbox of this
// agent holds. It also places m.idSlot, the first time, at a slot derived
// from the state dir. m.mu is held.
func (m *Manager) heldRangesLocked() map[uint32]bool {
	if !m.idSlotSet {
		h := fnv.New32a()
		h.Write([]byte(m.cfg.StateDir))
		m.idSlot = h.Sum32() % idSlots
		m.idSlotSet = true
	}
	used := make(map[uint32]bool, len(m.boxes))
	for _, sb := range m.boxes {
		if sb.rec.IDMap != nil {
			used[sb.rec.IDMap.HostID] = true
		}
	}
	return used
}

// claimRange claims the range at host for this agent, machine-wide: a
// file named after it in Config.IDRangeDir, linked into place whole (so
// it is never seen empty) and naming the state dir. A file of this
// agent's state dir is its own claim (of a sandbox whose removal did not
// get to release it); one naming a state dir that is gone is stale, and
// taken over under the directory's lock. ok is false when another agent
// holds it, or the claim cannot be taken over (another user's file).
func (m *Manager) claimRange(host uint32) (ok bool, err error) {
	path := m.claimPath(host)
	me := []byte(m.cfg.StateDir)
	tmp, err := os.CreateTemp(m.cfg.IDRangeDir, ".claim-")
	if err != nil {
		return false, m.claimsErr(err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(me)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, m.claimsErr(err)
	}
	if err := os.Link(tmp.Name(), path); err == nil {
		return true, nil
	} else if !errors.Is(err, fs.ErrExist) {
		return false, m.claimsErr(err)
	}
	if owner, err := os.ReadFile(path); err != nil || !m.mayTake(owner) {
		return false, nil // another agent's, or gone meanwhile: the next search may take it
	}
	// Two agents that found it stale at once must not both take it: the
	// takeover reads it again under the lock.
	unlock, err := lockDir(m.cfg.IDRangeDir)
	if err != nil {
		return false, m.claimsErr(err)
	}
	defer unlock()
	if owner, err := os.ReadFile(path); err != nil || !m.mayTake(owner) {
		return false, nil
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, nil // not ours to replace (another user's file): pass it by
	}
	return true, nil
}

// mayTake reports whether a claim naming owner is this agent's own, or
// stale: its state dir is gone.
func (m *Manager) mayTake(owner []byte) bool {
	if bytes.Equal(owner, []byte(m.cfg.StateDir)) {
		return true
	}
	if len(owner) == 0 || owner[0] != '/' {
		return false
	}
	_, err := os.Stat(string(owner))
	return errors.Is(err, fs.ErrNotExist)
}

func (m *Manager) claimPath(host uint32) string {
	return filepath.Join(m.cfg.IDRangeDir, strconv.FormatUint(uint64(host), 10))
}

// claimsErr is an error of the claims directory: the sandboxes with a
// user namespace are unavailable until it is fixed.
func (m *Manager) claimsErr(err error) error {
	return Errorf(ErrUnavailable, "the id range claims in %s: %w", m.cfg.IDRangeDir, err)
}

// lockDir takes an exclusive flock of dir, for the claims' takeovers.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil // closing it releases the lock
}

// reclaimRange renews the claim of a range a recorded sandbox holds, for a
// restarted agent; another agent's claim on it is a collision it reports.
func (m *Manager) reclaimRange(host uint32) error {
	ok, err := m.claimRange(host)
	if err == nil && !ok {
		err = fmt.Errorf("id range %d is claimed by another agent too: their sandboxes share host ids", host)
	}
	return err
}

// releaseRange gives up this agent's claim of the range at host, under
// the directory's lock, so a claim another agent took over is not removed.
func (m *Manager) releaseRange(host uint32) {
	unlock, err := lockDir(m.cfg.IDRangeDir)
	if err != nil {
		return
	}
	defer unlock()
	if owner, err := os.ReadFile(m.claimPath(host)); err == nil && bytes.Equal(owner, []byte(m.cfg.StateDir)) {
		os.Remove(m.claimPath(host))
	}
}

// sweepRanges releases this agent's claims that no recorded sandbox holds
// (held): what an agent that died between a claim and a record, or in
// clearing a sandbox, left.
func (m *Manager) sweepRanges(held map[uint32]bool) {
	entries, err := os.ReadDir(m.cfg.IDRangeDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		host, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil || held[uint32(host)] {
			continue
		}
		m.releaseRange(uint32(host))
	}
}
