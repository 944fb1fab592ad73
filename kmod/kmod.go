// Package kmod loads kernel modules with their dependencies, as modprobe
// does, from the modules.dep that depmod wrote; so the agent, as a VM's
// init, needs no module tools to bring up its drivers.
package kmod

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Loader loads modules from one kernel's module tree.
type Loader struct {
	// Dir is the module tree, /lib/modules/<kernel release>.
	Dir string
	// SysModule lists the loaded modules, /sys/module.
	SysModule string
	// Insert loads one module file; InsertFile (finit_module) in production.
	Insert func(path string) error
}

// Load loads each named module after its dependencies, skipping what is
// built in or already loaded, and returns the modules it inserted.
func (l Loader) Load(names ...string) ([]string, error) {
	deps, err := readDeps(filepath.Join(l.Dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	builtin := readBuiltin(filepath.Join(l.Dir, "modules.builtin"))
	return l.load(deps, builtin, names)
}

// load is Load once modules.dep (a module's path to its dependencies'
// paths) and modules.builtin (the names built in) are read.
func (l Loader) load(deps map[string][]string, builtin map[string]bool, names []string) ([]string, error) {
	byName := map[string]string{}
	for path := range deps {
		byName[moduleName(path)] = path
	}
	var inserted []string
	done := map[string]bool{}
	var load func(path string, chain []string) error
	load = func(path string, chain []string) error {
		name := moduleName(path)
		if done[name] {
			return nil
		}
		for _, c := range chain {
			if c == name {
				return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
			}
		}
		for _, dep := range deps[path] {
			if err := load(dep, append(chain, name)); err != nil {
				return err
			}
		}
		done[name] = true
		if l.loaded(name) {
			return nil
		}
		if err := l.Insert(filepath.Join(l.Dir, path)); err != nil {
			return fmt.Errorf("load module %s (%s): %w", name, path, err)
		}
		inserted = append(inserted, name)
		return nil
	}
	var errs []error
	for _, n := range names {
		name := normalize(n)
		if !validName(name) {
			errs = append(errs, fmt.Errorf("module %q: not a module name", n))
			continue
		}
		if builtin[name] || l.loaded(name) {
			continue
		}
		path, ok := byName[name]
		if !ok {
			errs = append(errs, fmt.Errorf("module %s: not in %s", n, filepath.Join(l.Dir, "modules.dep")))
			continue
		}
		if err := load(path, nil); err != nil {
			errs = append(errs, err)
		}
	}
	return inserted, errors.Join(errs...)
}

func (l Loader) loaded(name string) bool {
	if !validName(name) {
		return false
	}
	_, err := os.Stat(filepath.Join(l.SysModule, name))
	return err == nil
}

// validName reports whether name can be a module's. Module names are file
// names: never empty, "." or "..", and without '/'; any other would make
// loaded look at /sys/module itself or beyond it.
func validName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.Contains(name, "/")
}

// readDeps reads modules.dep.
func readDeps(path string) (map[string][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("module dependencies: %w (run depmod for this kernel)", err)
	}
	defer f.Close()
	deps, err := parseDeps(f)
	if err != nil {
		return nil, fmt.Errorf("module dependencies %s: %w", path, err)
	}
	return deps, nil
}

// parseDeps parses modules.dep: "path: dep dep ..."; a line without a
// colon is skipped.
func parseDeps(r io.Reader) (map[string][]string, error) {
	deps := map[string][]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[strings.TrimSpace(mod)] = strings.Fields(rest)
	}
	return deps, sc.Err()
}

// readBuiltin reads modules.builtin; without one, nothing is built in.
func readBuiltin(path string) map[string]bool {
	data, _ := os.ReadFile(path)
	return parseBuiltin(data)
}

// parseBuiltin returns the names of the modules modules.builtin lists, one
// path a line.
func parseBuiltin(data []byte) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Fields(string(data)) {
		out[moduleName(line)] = true
	}
	return out
}

// moduleName is a module's name from its path: kernel/fs/btrfs/btrfs.ko is
// btrfs; dashes are underscores, as the kernel names them.
func moduleName(path string) string {
	base := filepath.Base(path)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		base = strings.TrimSuffix(base, ext)
	}
	return normalize(strings.TrimSuffix(base, ".ko"))
}

func normalize(name string) string { return strings.ReplaceAll(name, "-", "_") }
