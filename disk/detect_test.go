package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/testenv"
)

const MiB = 1 << 20

// image returns a zeroed image of size bytes with the given bytes written
// at their offsets.
func image(size int, writes map[int][]byte) []byte {
	b := make([]byte, size)
	for off, data := range writes {
		copy(b[off:], data)
	}
	return b
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// extImage crafts an ext superblock with the given feature flags.
func extImage(compat, incompat, roCompat uint32) []byte {
	return image(2*MiB, map[int][]byte{
		0x438: {0x53, 0xef},
		0x45c: le32(compat),
		0x460: le32(incompat),
		0x464: le32(roCompat),
	})
}

func TestDetectCrafted(t *testing.T) {
	mbrEntry := make([]byte, 16)
	mbrEntry[4] = 0x83 // Linux
	tests := []struct {
		name string
		img  []byte
		want Signature
	}{
		{"blank", image(4*MiB, nil), Signature{KindBlank, 0}},
		{"blank tiny", image(100, nil), Signature{KindBlank, 0}},
		{"empty", nil, Signature{KindBlank, 0}},
		{"btrfs", image(2*MiB, map[int][]byte{0x10040: []byte("_BHRfS_M")}), Signature{KindBtrfs, 0x10040}},
		{"btrfs wins over junk", image(2*MiB, map[int][]byte{0: []byte("junk"), 0x10040: []byte("_BHRfS_M")}), Signature{KindBtrfs, 0x10040}},
		{"btrfs temporary", image(2*MiB, map[int][]byte{0x10040: []byte("!BHRfS_M")}), Signature{KindBtrfsIncomplete, 0x10040}},
		{"btrfs magic cut short", image(0x10044, map[int][]byte{0x10040: []byte("_BHR")}), Signature{KindUnknown, 0x10040}},
		{"ext2", extImage(0x38, 0x2, 0x3), Signature{KindExt2, 0x438}},
		{"ext3", extImage(0x3c, 0x2, 0x3), Signature{KindExt3, 0x438}},
		{"ext4 extents", extImage(0x3c, 0x2|0x40, 0x3), Signature{KindExt4, 0x438}},
		{"ext4 metadata_csum", extImage(0x3c, 0x2, 0x3|0x400), Signature{KindExt4, 0x438}},
		{"ext superblock cut short", image(0x440, map[int][]byte{0x438: {0x53, 0xef}}), Signature{KindUnknown, 0x438}},
		{"xfs", image(MiB, map[int][]byte{0: []byte("XFSB")}), Signature{KindXFS, 0}},
		{"swap 4k", image(MiB, map[int][]byte{4086: []byte("SWAPSPACE2")}), Signature{KindSwap, 4086}},
		{"swap old", image(MiB, map[int][]byte{4086: []byte("SWAP-SPACE")}), Signature{KindSwap, 4086}},
		{"swap 64k pages", image(MiB, map[int][]byte{65526: []byte("SWAPSPACE2")}), Signature{KindSwap, 65526}},
		{"luks", image(MiB, map[int][]byte{0: []byte("LUKS\xba\xbe\x00\x02")}), Signature{KindLUKS, 0}},
		{"gpt", image(MiB, map[int][]byte{510: {0x55, 0xaa}, 512: []byte("EFI PART")}), Signature{KindGPT, 512}},
		{"gpt 4k sectors", image(MiB, map[int][]byte{4096: []byte("EFI PART")}), Signature{KindGPT, 4096}},
		{"mbr", image(MiB, map[int][]byte{446: mbrEntry, 510: {0x55, 0xaa}}), Signature{KindMBR, 510}},
		{"mbr without partitions is unknown data", image(MiB, map[int][]byte{510: {0x55, 0xaa}}), Signature{KindUnknown, 510}},
		{"unknown at start", image(4*MiB, map[int][]byte{0x200: {1}}), Signature{KindUnknown, 0x200}},
		{"unknown at end of head", image(4*MiB, map[int][]byte{MiB - 1: {1}}), Signature{KindUnknown, MiB - 1}},
		{"unknown in the middle is not seen", image(4*MiB, map[int][]byte{2 * MiB: {1}}), Signature{KindBlank, 0}},
		{"unknown at the very end", image(4*MiB, map[int][]byte{4*MiB - 1: {7}}), Signature{KindUnknown, 4*MiB - 1}},
		{"unknown in last MiB", image(3*MiB, map[int][]byte{2*MiB + 5: {7}}), Signature{KindUnknown, 2*MiB + 5}},
		{"unknown in overlap of a small device", image(MiB+10, map[int][]byte{MiB + 3: {7}}), Signature{KindUnknown, MiB + 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Detect(bytes.NewReader(tt.img), int64(len(tt.img)))
			if err != nil {
				t.Fatalf("Detect: %v", err)
			}
			if got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// shortReader claims more bytes than it has.
type shortReader struct{ r *bytes.Reader }

func (s shortReader) ReadAt(p []byte, off int64) (int, error) { return s.r.ReadAt(p, off) }

func TestDetectShortDevice(t *testing.T) {
	_, err := Detect(shortReader{bytes.NewReader(make([]byte, 100))}, 4*MiB)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("got %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestSignatureString(t *testing.T) {
	for sig, want := range map[Signature]string{
		{Kind: KindBlank}:               "no signature (blank)",
		{Kind: KindExt4, Offset: 0x438}: "ext4 (at offset 0x438)",
		{Kind: KindUnknown, Offset: 0}:  "unknown data (at offset 0x0)",
	} {
		if got := sig.String(); got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

// TestDetectRealTools formats image files with the real tools (no root:
// they write plain files) and checks Detect names what they made.
func TestDetectRealTools(t *testing.T) {
	tests := []struct {
		tool string
		args func(t testing.TB, img string) []string
		want Kind
	}{
		{"mkfs.btrfs", func(t testing.TB, img string) []string { return []string{"-q", img} }, KindBtrfs},
		{"mkfs.ext4", func(t testing.TB, img string) []string { return []string{"-q", "-F", img} }, KindExt4},
		{"mkfs.ext3", func(t testing.TB, img string) []string { return []string{"-q", "-F", img} }, KindExt3},
		{"mkfs.ext2", func(t testing.TB, img string) []string { return []string{"-q", "-F", img} }, KindExt2},
		{"mkfs.xfs", func(t testing.TB, img string) []string { return []string{"-q", img} }, KindXFS},
		{"mkswap", func(t testing.TB, img string) []string { return []string{img} }, KindSwap},
		{"sfdisk", nil, KindGPT},
		{"cryptsetup", func(t testing.TB, img string) []string {
			key := filepath.Join(filepath.Dir(img), "key")
			if err := os.WriteFile(key, []byte("not a secret"), 0o600); err != nil {
				t.Fatal(err)
			}
			return []string{"luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
				"--pbkdf-force-iterations", "1000", "--key-file", key, img}
		}, KindLUKS},
	}
	for _, tt := range tests {
		t.Run(tt.tool, func(t *testing.T) {
			bin := testenv.RequireBinary(t, tt.tool)
			img := filepath.Join(t.TempDir(), "img")
			if err := os.Truncate(mustCreate(t, img), 320*MiB); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin)
			if tt.args != nil {
				cmd.Args = append(cmd.Args, tt.args(t, img)...)
			} else { // sfdisk reads its script from stdin
				cmd.Args = append(cmd.Args, "-q", img)
				cmd.Stdin = bytes.NewBufferString("label: gpt\n,,L\n")
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				if tt.tool == "cryptsetup" && !testenv.InCI() {
					t.Skipf("cryptsetup cannot format a plain file here: %v: %s", err, out)
				}
				t.Fatalf("%v: %v: %s", cmd, err, out)
			}
			sig := detectFile(t, img)
			if sig.Kind != tt.want {
				t.Errorf("got %v, want %s", sig, tt.want)
			}
		})
	}
}

func mustCreate(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return path
}

func detectFile(t testing.TB, path string) Signature {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd) // Stat reports 0 bytes for a block device
	if err != nil {
		t.Fatal(err)
	}
	sig, err := Detect(f, size)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}
