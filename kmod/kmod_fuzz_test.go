package kmod

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzLoad loads modules named by a list from an arbitrary modules.dep and
// modules.builtin, inserting nothing for real. It checks Load never panics,
// inserts each module at most once and only after every dependency its
// modules.dep line names, reports exactly what it inserted, and names each
// requested module that is neither listed nor built in.
func FuzzLoad(f *testing.F) {
	f.Add(dep, "kernel/fs/ext4/ext4.ko\n", "virtio_pci,virtio_net,btrfs,vsock-loopback,ext4")
	f.Add("a.ko: b.ko\nb.ko: a.ko\n", "", "a")                         // a cycle
	f.Add("a.ko: a.ko\n", "", "a")                                     // a module that needs itself
	f.Add("x/a.ko: y/b.ko.xz\ny/b.ko.xz: z/c-d.ko.zst\n", "", "a,c_d") // compressed, dashes
	f.Add("x/a.ko: y/b.ko\n", "", "a")                                 // a dependency without a line of its own
	f.Add("x/a.ko:\ny/a.ko:\n", "", "a")                               // two modules of one name
	f.Add("  k/a.ko  :  \t k/b.ko  \r\nk/b.ko:\n", "", "a")            // spaces, CRLF
	f.Add(":\n::\n: :\nno colon\n", "\n.ko\n", ",.,..,,")
	f.Add("a.ko: b.ko\n", "b.ko\n", "a,b") // a dependency built in
	f.Add("", "", "missing")
	f.Fuzz(func(t *testing.T, depFile, builtinFile, names string) {
		deps, err := parseDeps(strings.NewReader(depFile))
		if err != nil {
			return // too long a line; TestLoadNamesABadModulesDep checks the error
		}
		builtin := parseBuiltin([]byte(builtinFile))
		const dir = "/lib/modules/fuzz"
		// Insert is given the tree's path joined (so cleaned) with the
		// module's.
		pathOf := map[string]string{}
		for p := range deps {
			pathOf[filepath.Join(dir, p)] = p
		}
		var order []string // module names, as inserted
		// No module is loaded: SysModule does not exist.
		l := Loader{Dir: dir, SysModule: "/nonexistent/arcbox-fuzz/sys/module", Insert: func(path string) error {
			rel, ok := pathOf[path]
			if !ok {
				rel, _ = filepath.Rel(dir, path) // a dependency without a line of its own
			}
			name := moduleName(rel)
			if slices.Contains(order, name) {
				t.Fatalf("%s inserted twice", name)
			}
			for _, d := range deps[rel] {
				if !slices.Contains(order, moduleName(d)) {
					t.Fatalf("%s inserted before its dependency %s", rel, d)
				}
			}
			order = append(order, name)
			return nil
		}}
		requested := strings.Split(names, ",")
		inserted, err := l.load(deps, builtin, requested)
		if !slices.Equal(inserted, order) {
			t.Fatalf("Load reports %v inserted, but inserted %v", inserted, order)
		}
		listed := map[string]bool{}
		for path := range deps {
			listed[moduleName(path)] = true
		}
		for _, n := range requested {
			name := normalize(n)
			switch {
			case !validName(name):
				if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("module %q: not a module name", n)) {
					t.Fatalf("%q is not a module name, but the error is %v", n, err)
				}
			case !listed[name] && !builtin[name]:
				if err == nil || !strings.Contains(err.Error(), "module "+n+": not in") {
					t.Fatalf("%q is not in modules.dep, but the error is %v", n, err)
				}
			}
		}
	})
}
