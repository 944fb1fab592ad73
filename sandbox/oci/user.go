package oci

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"

	"github.com/arcbox/arcbox-agent/sandbox"
)

// execUser is who a process runs as.
type execUser struct {
	UID, GID       uint32
	AdditionalGIDs []uint32
	Home           string
}

type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
}

type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// errNotRegular: a file the agent reads from a sandbox's root is not a
// regular file (a workload may have made it a FIFO, a device, anything).
var errNotRegular = errors.New("not a regular file")

// resolveUser turns "", "uid[:gid]" or "name[:group]" into ids, reading the
// sandbox's /etc/passwd and /etc/group through readFile (a missing file is
// an empty one). A name that is not there is an sandbox.ErrInvalid naming field.
func resolveUser(field, spec string, readFile func(name string) ([]byte, error)) (execUser, error) {
	passwd, err := readOptional(readFile, "/etc/passwd")
	if err != nil {
		return execUser{}, err
	}
	group, err := readOptional(readFile, "/etc/group")
	if err != nil {
		return execUser{}, err
	}
	users := parsePasswd(passwd)
	groups := parseGroup(group)

	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	u := execUser{Home: "/"}
	var entry *passwdEntry
	if userPart == "" {
		userPart = "0"
	}
	if uid, err := strconv.ParseUint(userPart, 10, 32); err == nil {
		u.UID = uint32(uid)
		for i := range users {
			if users[i].uid == u.UID {
				entry = &users[i]
				break
			}
		}
	} else {
		for i := range users {
			if users[i].name == userPart {
				entry = &users[i]
				break
			}
		}
		if entry == nil {
			return execUser{}, sandbox.InvalidField(field, "no user %q in the sandbox's /etc/passwd", userPart)
		}
		u.UID = entry.uid
	}
	if entry != nil {
		u.GID = entry.gid
		if entry.home != "" {
			u.Home = entry.home
		}
	} else if u.UID == 0 {
		u.Home = "/root"
	}
	if hasGroup {
		if gid, err := strconv.ParseUint(groupPart, 10, 32); err == nil {
			u.GID = uint32(gid)
		} else {
			found := false
			for _, g := range groups {
				if g.name == groupPart {
					u.GID, found = g.gid, true
					break
				}
			}
			if !found {
				return execUser{}, sandbox.InvalidField(field, "no group %q in the sandbox's /etc/group", groupPart)
			}
		}
	}
	if entry != nil {
		for _, g := range groups {
			for _, m := range g.members {
				if m == entry.name && g.gid != u.GID {
					u.AdditionalGIDs = append(u.AdditionalGIDs, g.gid)
				}
			}
		}
	}
	return u, nil
}

func readOptional(readFile func(string) ([]byte, error), name string) ([]byte, error) {
	data, err := readFile(name)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotRegular) {
		return nil, nil // no users defined: names do not resolve, ids do
	}
	if err != nil {
		return nil, fmt.Errorf("read the sandbox's %s: %w", name, err)
	}
	return data, nil
}

func parsePasswd(data []byte) []passwdEntry {
	var out []passwdEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(f) < 4 || strings.HasPrefix(f[0], "#") {
			continue
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		e := passwdEntry{name: f[0], uid: uint32(uid), gid: uint32(gid)}
		if len(f) > 5 {
			e.home = f[5]
		}
		out = append(out, e)
	}
	return out
}

func parseGroup(data []byte) []groupEntry {
	var out []groupEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(f) < 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		e := groupEntry{name: f[0], gid: uint32(gid)}
		if len(f) > 3 && f[3] != "" {
			e.members = strings.Split(f[3], ",")
		}
		out = append(out, e)
	}
	return out
}
