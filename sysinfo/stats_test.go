package sysinfo

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var statsNow = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func TestCollectStatsFromFixtures(t *testing.T) {
	got, err := StatsSource{ProcRoot: "testdata/stats/proc", Now: func() time.Time { return statsNow }}.Collect()
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{
		Time: statsNow,
		Memory: MemoryStats{Total: 8133508 << 10, Available: 7559388 << 10, Used: (8133508 - 7559388) << 10,
			SwapTotal: 1048572 << 10, SwapFree: 1048000 << 10},
		LoadAverage: [3]float64{0.52, 0.25, 0.10},
		Pressure: PressureSet{
			CPU: &Pressure{Some: PressureLine{53.50, 15.12, 6.15, 8776820738}, Full: &PressureLine{}},
			Memory: &Pressure{Some: PressureLine{1.25, 0.50, 0.10, 123456},
				Full: &PressureLine{0.75, 0.25, 0.05, 65432}},
			IO: &Pressure{Some: PressureLine{0.84, 0.51, 0.79, 1249625235},
				Full: &PressureLine{0.27, 0.31, 0.65, 450494364}},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

// procCopy copies the stats fixtures to a directory a test may change.
func procCopy(t *testing.T) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "copy")
	if err := os.CopyFS(dst, os.DirFS("testdata/stats/proc")); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestCollectStatsWithoutPSI: a kernel without PSI (no /proc/pressure)
// leaves the pressure out; that is no error.
func TestCollectStatsWithoutPSI(t *testing.T) {
	proc := procCopy(t)
	if err := os.RemoveAll(filepath.Join(proc, "pressure")); err != nil {
		t.Fatal(err)
	}
	got, err := StatsSource{ProcRoot: proc}.Collect()
	if err != nil {
		t.Fatal(err)
	}
	if got.Pressure != (PressureSet{}) {
		t.Errorf("pressure %+v, want none", got.Pressure)
	}
	if got.Memory.Total == 0 {
		t.Error("memory not read")
	}
}

// TestCollectStatsDataVolume: the data volume is reported while mountinfo
// shows a mount at its mount point (escaped as the kernel escapes it),
// with the space statfs gives; not otherwise, and not when the directory
// is missing.
func TestCollectStatsDataVolume(t *testing.T) {
	proc := procCopy(t)
	dir := filepath.Join(t.TempDir(), "data vol")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	src := StatsSource{ProcRoot: proc, DataMount: dir}
	got, err := src.Collect()
	if err != nil || got.DataVolume != nil {
		t.Fatalf("not mounted: got %+v, %v; want no volume", got.DataVolume, err)
	}

	line := "40 30 0:50 / " + strings.ReplaceAll(resolved, " ", `\040`) + " rw - btrfs /dev/vdb rw\n"
	f, err := os.OpenFile(filepath.Join(proc, "self", "mountinfo"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(line); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err = src.Collect()
	if err != nil {
		t.Fatal(err)
	}
	v := got.DataVolume
	if v == nil || v.MountPoint != dir || v.Total == 0 || v.Free > v.Total || v.Used > v.Total {
		t.Fatalf("mounted: got %+v, want the space of %s", v, dir)
	}

	src.DataMount = filepath.Join(dir, "missing")
	if got, err := src.Collect(); err != nil || got.DataVolume != nil {
		t.Errorf("missing directory: got %+v, %v; want no volume", got.DataVolume, err)
	}
}

// TestCollectStatsNamesWhatIsWrong: a malformed file fails the collection
// with an error that names the file and the field.
func TestCollectStatsNamesWhatIsWrong(t *testing.T) {
	for file, tc := range map[string]struct{ content, want string }{
		"meminfo":         {"MemTotal: 1 kB\nMemAvailable: 1 kB\nSwapTotal: 1 kB\n", "no SwapFree line"},
		"loadavg":         {"0.1\n", "load averages"},
		"pressure/memory": {"some avg10=x avg60=0 avg300=0 total=0\n", `avg10 "x" is not a percentage`},
	} {
		t.Run(file, func(t *testing.T) {
			proc := procCopy(t)
			if err := os.WriteFile(filepath.Join(proc, file), []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := StatsSource{ProcRoot: proc}.Collect()
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), file) {
				t.Errorf("got %v, want an error naming %s and %q", err, file, tc.want)
			}
		})
	}
}

func TestParsePressure(t *testing.T) {
	good := "some avg10=0.12 avg60=0.05 avg300=0.01 total=12345\n"
	p, err := ParsePressure([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Pressure{Some: PressureLine{0.12, 0.05, 0.01, 12345}}); !reflect.DeepEqual(p, want) {
		t.Errorf("got %+v, want %+v", p, want)
	}
	// A key a later kernel may add is skipped.
	if _, err := ParsePressure([]byte("some avg10=0 avg60=0 avg300=0 total=0 avg1=3\n")); err != nil {
		t.Errorf("an unknown key: %v", err)
	}
	for in, want := range map[string]string{
		"":                                      "no some line",
		"full avg10=0 avg60=0 avg300=0 total=0": "no some line",
		"half avg10=0":                          `"half" is neither some nor full`,
		good + good:                             "some given twice",
		"some avg10=0 avg60=0 avg300=0":         "some: no total",
		"some avg10=0 avg10=0 avg60=0 avg300=0 total=0":           "avg10 given twice",
		"some avg10=101 avg60=0 avg300=0 total=0":                 `avg10 "101" is not a percentage`,
		"some avg10=NaN avg60=0 avg300=0 total=0":                 `avg10 "NaN" is not a percentage`,
		"some avg10=0 avg60=-1 avg300=0 total=0":                  `avg60 "-1" is not a percentage`,
		"some avg10=0 avg60=0 avg300=0 total=-5":                  `total "-5" is not a number of microseconds`,
		"some avg10=0 avg60=0 avg300=0 total=9223372036854775808": "is not a number of microseconds",
		"some avg10 avg60=0 avg300=0 total=0":                     `"avg10" is not key=value`,
	} {
		if _, err := ParsePressure([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error with %q", in, err, want)
		}
	}
}
