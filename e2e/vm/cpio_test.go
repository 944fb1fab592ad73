package vm

import (
	"fmt"
	"io"
	"strings"
)

// cpioWriter writes a newc ("070701") archive, the format the kernel
// unpacks as an initramfs. Written here so building the image needs
// neither root (for device nodes) nor a cpio binary.
type cpioWriter struct {
	w     io.Writer
	inode int
}

type cpioEntry struct {
	name         string
	mode         uint32 // type and permission bits, as in stat(2)
	rdevMajor    uint32
	rdevMinor    uint32
	data         []byte
	linkTarget   string
	mtimeSeconds int64
}

const (
	sIFDIR  = 0o040000
	sIFREG  = 0o100000
	sIFLNK  = 0o120000
	sIFCHR  = 0o020000
	trailer = "TRAILER!!!"
)

func (c *cpioWriter) write(e cpioEntry) error {
	c.inode++
	body := e.data
	if e.mode&0o170000 == sIFLNK {
		body = []byte(e.linkTarget)
	}
	name := strings.TrimPrefix(e.name, "/")
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.inode, e.mode, 0, 0, 1, e.mtimeSeconds, len(body), 0, 0, e.rdevMajor, e.rdevMinor, len(name)+1, 0)
	if _, err := io.WriteString(c.w, hdr+name+"\x00"); err != nil {
		return err
	}
	if err := c.pad(len(hdr) + len(name) + 1); err != nil {
		return err
	}
	if _, err := c.w.Write(body); err != nil {
		return err
	}
	return c.pad(len(body))
}

func (c *cpioWriter) pad(n int) error {
	if r := n % 4; r != 0 {
		_, err := c.w.Write(make([]byte, 4-r))
		return err
	}
	return nil
}

func (c *cpioWriter) close() error {
	return c.write(cpioEntry{name: trailer})
}
