package disk

import (
	"bytes"
	"slices"
	"testing"
)

// fuzzImage is a zeroed device image of size bytes (at most three
// ScanBytes, so the head, the tail and the gap Detect never reads are all
// reachable) with data written at off; what does not fit is cut.
func fuzzImage(data []byte, off, size uint32) []byte {
	n := int(size % (3*ScanBytes + 1))
	img := make([]byte, n)
	copy(img[int(off)%(n+1):], data)
	return img
}

// magicsOf are the bytes each kind's evidence starts with at its offset.
var magicsOf = map[Kind][][]byte{
	KindBtrfs:           {btrfsMagic},
	KindBtrfsIncomplete: {btrfsMagicTemporary},
	KindExt2:            {{0x53, 0xef}},
	KindExt3:            {{0x53, 0xef}},
	KindExt4:            {{0x53, 0xef}},
	KindXFS:             {xfsMagic},
	KindLUKS:            {luksMagic},
	KindSwap:            swapMagics,
	KindGPT:             {gptMagic},
	KindMBR:             {{0x55, 0xaa}},
}

// FuzzDetect feeds Detect images of any size carrying any bytes anywhere,
// and checks that it never fails on a complete device and that whatever it
// reports is backed by the image: a known kind by its magic at the offset
// it names (an ext superblock complete up to its feature flags), unknown
// data by a non-zero byte preceded by zeros only, blank by zeros in both
// areas it reads.
func FuzzDetect(f *testing.F) {
	mbrEntry := make([]byte, 16)
	mbrEntry[4] = 0x83
	for _, s := range []struct {
		data      []byte
		off, size uint32
	}{
		{nil, 0, 0},
		{nil, 0, 4 * MiB},
		{[]byte("_BHRfS_M"), btrfsMagicOffset, 2 * MiB},
		{[]byte("!BHRfS_M"), btrfsMagicOffset, 2 * MiB},
		{[]byte("_BHR"), btrfsMagicOffset, btrfsMagicOffset + 4}, // magic cut short by the device's end
		{slices.Concat([]byte{0x53, 0xef}, make([]byte, 0x22), le32(0x3c), le32(0x2|0x40), le32(0x3)), extMagicOffset, 2 * MiB},
		{[]byte{0x53, 0xef}, extMagicOffset, extMagicOffset + 8}, // superblock cut short
		{[]byte("XFSB"), 0, MiB},
		{[]byte("LUKS\xba\xbe\x00\x02"), 0, MiB},
		{[]byte("SWAPSPACE2"), 4086, MiB},
		{[]byte("SWAP-SPACE"), 65526, MiB},
		{[]byte("EFI PART"), 512, MiB},
		{[]byte("EFI PART"), 4096, MiB},
		{slices.Concat(mbrEntry, make([]byte, 48), []byte{0x55, 0xaa}), mbrTableOffset, MiB},
		{[]byte{0x55, 0xaa}, mbrSigOffset, MiB}, // a boot signature without partitions
		{[]byte{7}, 4*MiB - 1, 4 * MiB},
		{[]byte{7}, 2 * MiB, 3 * MiB},
		{[]byte{7}, MiB + 3, MiB + 10},
	} {
		f.Add(s.data, s.off, s.size)
	}
	f.Fuzz(func(t *testing.T, data []byte, off, size uint32) {
		img := fuzzImage(data, off, size)
		sig, err := Detect(bytes.NewReader(img), int64(len(img)))
		if err != nil {
			t.Fatalf("Detect of a complete %d-byte image: %v", len(img), err)
		}
		head := img[:min(len(img), ScanBytes)]
		tailStart := max(len(head), len(img)-ScanBytes)
		switch sig.Kind {
		case KindBlank:
			if sig.Offset != 0 || firstNonZero(head) >= 0 || firstNonZero(img[tailStart:]) >= 0 {
				t.Fatalf("%v, but the areas read are not all zero", sig)
			}
		case KindUnknown:
			at := int(sig.Offset)
			if at < 0 || at >= len(img) || img[at] == 0 {
				t.Fatalf("%v does not point at a non-zero byte of a %d-byte image", sig, len(img))
			}
			earlier := head[:min(at, len(head))]
			if at >= len(head) {
				if at < tailStart {
					t.Fatalf("%v lies between the areas Detect reads", sig)
				}
				earlier = append(slices.Clone(head), img[tailStart:at]...)
			}
			if firstNonZero(earlier) >= 0 {
				t.Fatalf("%v, but an earlier byte it read is not zero", sig)
			}
		default:
			magics, ok := magicsOf[sig.Kind]
			if !ok {
				t.Fatalf("unexpected kind %q", sig.Kind)
			}
			if !slices.ContainsFunc(magics, func(m []byte) bool { return hasAt(head, sig.Offset, m) }) {
				t.Fatalf("%v, but no %s magic at that offset", sig, sig.Kind)
			}
			isExt := sig.Kind == KindExt2 || sig.Kind == KindExt3 || sig.Kind == KindExt4
			if isExt && len(head) < extFeaturesEnd {
				t.Fatalf("%v from a superblock cut short at %#x", sig, len(head))
			}
		}
	})
}
