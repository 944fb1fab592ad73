package disk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

// Kind names what Detect recognised on a device.
type Kind string

// The kinds Detect tells apart. Any kind but KindBlank and KindBtrfs is data
// Ensure will not format over without Wipe.
const (
	KindBlank           Kind = "blank"            // the areas Detect reads are all zero
	KindBtrfs           Kind = "btrfs"            // complete btrfs superblock
	KindBtrfsIncomplete Kind = "incomplete btrfs" // mkfs.btrfs's temporary magic: a format that never finished
	KindExt2            Kind = "ext2"
	KindExt3            Kind = "ext3"
	KindExt4            Kind = "ext4"
	KindXFS             Kind = "xfs"
	KindSwap            Kind = "swap"
	KindLUKS            Kind = "LUKS"
	KindMBR             Kind = "MBR partition table"
	KindGPT             Kind = "GPT partition table"
	KindUnknown         Kind = "unknown data" // non-zero bytes matching no known signature
)

// Signature is what Detect found: a kind and the byte offset of the evidence
// (the magic, or the first non-zero byte of unknown data).
type Signature struct {
	Kind   Kind
	Offset int64
}

// String describes the signature for errors and logs.
func (s Signature) String() string {
	if s.Kind == KindBlank || s.Kind == "" {
		return "no signature (blank)"
	}
	return fmt.Sprintf("%s (at offset %#x)", s.Kind, s.Offset)
}

// ScanBytes is how much Detect reads at each end of a device: a device is
// blank only when both its first and its last ScanBytes are all zero.
const ScanBytes = 1 << 20

// Offsets and magics of the signatures Detect knows.
const (
	btrfsMagicOffset = 0x10040
	extMagicOffset   = 0x438
	extSuperOffset   = 0x400
	mbrSigOffset     = 510
	mbrTableOffset   = 446
	extFeaturesEnd   = extSuperOffset + 0x68 // end of the ext feature flags extKind reads
)

var (
	btrfsMagic          = []byte("_BHRfS_M")
	btrfsMagicTemporary = []byte("!BHRfS_M") // written by mkfs.btrfs until it has finished
	xfsMagic            = []byte("XFSB")
	luksMagic           = []byte("LUKS\xba\xbe")
	gptMagic            = []byte("EFI PART")
	swapMagics          = [][]byte{[]byte("SWAPSPACE2"), []byte("SWAP-SPACE")}
	swapPageSizes       = []int64{4096, 8192, 16384, 32768, 65536}
	gptHeaderOffsets    = []int64{512, 4096} // LBA 1 for 512-byte and 4 KiB sectors
)

// Detect reports what a device of size bytes carries, reading only through
// r. It looks for the known signatures in the first ScanBytes; when none
// matches, any non-zero byte in the first or last ScanBytes makes the device
// KindUnknown, so data Detect cannot name is still never taken for blank.
// The first match wins, in this order: btrfs, incomplete btrfs, ext, xfs,
// LUKS, swap, GPT, MBR.
func Detect(r io.ReaderAt, size int64) (Signature, error) {
	head, err := readAt(r, 0, min(size, ScanBytes))
	if err != nil {
		return Signature{}, err
	}
	if sig, ok := knownSignature(head); ok {
		return sig, nil
	}
	if i := firstNonZero(head); i >= 0 {
		return Signature{Kind: KindUnknown, Offset: int64(i)}, nil
	}
	tailStart := max(int64(len(head)), size-ScanBytes)
	tail, err := readAt(r, tailStart, size-tailStart)
	if err != nil {
		return Signature{}, err
	}
	if i := firstNonZero(tail); i >= 0 {
		return Signature{Kind: KindUnknown, Offset: tailStart + int64(i)}, nil
	}
	return Signature{Kind: KindBlank}, nil
}

// knownSignature matches head, the start of a device, against the known
// signatures.
func knownSignature(head []byte) (Signature, bool) {
	switch {
	case hasAt(head, btrfsMagicOffset, btrfsMagic):
		return Signature{KindBtrfs, btrfsMagicOffset}, true
	case hasAt(head, btrfsMagicOffset, btrfsMagicTemporary):
		return Signature{KindBtrfsIncomplete, btrfsMagicOffset}, true
	case hasAt(head, extMagicOffset, []byte{0x53, 0xef}) && len(head) >= extFeaturesEnd:
		// A superblock cut short by the device's end is not ext: its
		// bytes are unknown data.
		return Signature{extKind(head), extMagicOffset}, true
	case hasAt(head, 0, xfsMagic):
		return Signature{KindXFS, 0}, true
	case hasAt(head, 0, luksMagic):
		return Signature{KindLUKS, 0}, true
	}
	for _, ps := range swapPageSizes {
		for _, m := range swapMagics {
			if hasAt(head, ps-10, m) {
				return Signature{KindSwap, ps - 10}, true
			}
		}
	}
	for _, off := range gptHeaderOffsets {
		if hasAt(head, off, gptMagic) {
			return Signature{KindGPT, off}, true
		}
	}
	if hasAt(head, mbrSigOffset, []byte{0x55, 0xaa}) && mbrHasPartition(head) {
		return Signature{KindMBR, mbrSigOffset}, true
	}
	return Signature{}, false
}

// extKind tells ext2, ext3 and ext4 apart by their feature flags, as blkid
// does: features ext3 does not know make ext4, a journal makes ext3.
func extKind(head []byte) Kind {
	sb := head[extSuperOffset:]
	compat := binary.LittleEndian.Uint32(sb[0x5c:])
	incompat := binary.LittleEndian.Uint32(sb[0x60:])
	roCompat := binary.LittleEndian.Uint32(sb[0x64:])
	const (
		compatHasJournal = 0x4
		ext3Incompat     = 0x2 | 0x4 | 0x8 | 0x10 // filetype, recover, journal_dev, meta_bg
		ext3RoCompat     = 0x1 | 0x2 | 0x4        // sparse_super, large_file, btree_dir
	)
	switch {
	case incompat&^ext3Incompat != 0 || roCompat&^ext3RoCompat != 0:
		return KindExt4
	case compat&compatHasJournal != 0:
		return KindExt3
	}
	return KindExt2
}

// mbrHasPartition reports whether any of the four MBR entries has a
// partition type.
func mbrHasPartition(head []byte) bool {
	for i := range 4 {
		if head[mbrTableOffset+16*i+4] != 0 {
			return true
		}
	}
	return false
}

func hasAt(b []byte, off int64, magic []byte) bool {
	return off+int64(len(magic)) <= int64(len(b)) && bytes.Equal(b[off:off+int64(len(magic))], magic)
}

func firstNonZero(b []byte) int {
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}

// readAt reads exactly n bytes at off; a short device is an error only if
// it is shorter than the size it claimed.
func readAt(r io.ReaderAt, off, n int64) ([]byte, error) {
	if n <= 0 {
		return nil, nil
	}
	buf := make([]byte, n)
	got, err := r.ReadAt(buf, off)
	if int64(got) == n {
		return buf, nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return nil, fmt.Errorf("read %d bytes at %#x: %w", n, off, err)
}
