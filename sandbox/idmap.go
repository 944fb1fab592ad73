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
// Config.IDRangeDir does not say: on tmpfs, so a reboot forgets the
// claims with the sandboxes.
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
	return IDMap{}, fmt.Errorf("every one of the %d user namespace id ranges is held by a sandbox: %w", idSlots, ErrBusy)
}

// claimRange claims the range at host for this agent, machine-wide: a
// file named after it in Config.IDRangeDir, made exclusively, holding the
// state dir. A file of this agent's state dir is its own claim (of a
// sandbox whose removal did not get to release it); one naming a state
// dir that is gone is stale, and taken over. ok is false when another
// agent holds it.
func (m *Manager) claimRange(host uint32) (ok bool, err error) {
	if err := os.MkdirAll(m.cfg.IDRangeDir, 0o755); err != nil {
		return false, fmt.Errorf("id range claims: %w", err)
	}
	path := filepath.Join(m.cfg.IDRangeDir, strconv.FormatUint(uint64(host), 10))
	me := []byte(m.cfg.StateDir)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err == nil {
		_, err = f.Write(me)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
			return false, fmt.Errorf("claim id range %d: %w", host, err)
		}
		return true, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return false, fmt.Errorf("claim id range %d: %w", host, err)
	}
	// Taking a claim over is done under the directory's lock, reading it
	// again there, so two agents that found it stale at once do not both
	// take it.
	unlock, err := lockDir(m.cfg.IDRangeDir)
	if err != nil {
		return false, fmt.Errorf("claim id range %d: %w", host, err)
	}
	defer unlock()
	owner, err := os.ReadFile(path)
	if err != nil {
		return false, nil // removed by its agent meanwhile: the next search may take it
	}
	if !bytes.Equal(owner, me) {
		if _, err := os.Stat(string(owner)); len(owner) == 0 || !errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
	}
	if err := os.WriteFile(path, me, 0o644); err != nil {
		return false, fmt.Errorf("claim id range %d: %w", host, err)
	}
	return true, nil
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

// releaseRange gives up this agent's claim of the range at host.
func (m *Manager) releaseRange(host uint32) {
	path := filepath.Join(m.cfg.IDRangeDir, strconv.FormatUint(uint64(host), 10))
	if owner, err := os.ReadFile(path); err == nil && bytes.Equal(owner, []byte(m.cfg.StateDir)) {
		os.Remove(path)
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
