package portwatch

// The sock_diag wire format (linux/sock_diag.h, linux/inet_diag.h): a dump
// request for one address family and protocol, filtered by socket state,
// and its multipart reply of inet_diag_msg records. Encoding and parsing
// are plain byte work, so they are tested and fuzzed on any platform; the
// socket that carries them is in diag_linux.go.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
)

// Values from the kernel's UAPI headers, spelled out so this file builds
// off Linux too.
const (
	afInet  = 2
	afInet6 = 10

	ipprotoTCP = 6
	ipprotoUDP = 17

	nlmsgError = 2
	nlmsgDone  = 3

	nlmFRequest  = 0x1
	nlmFMulti    = 0x2
	nlmFDumpIntr = 0x10
	nlmFDump     = 0x300 // NLM_F_ROOT | NLM_F_MATCH

	sockDiagByFamily = 20
	tcpdiagGetSock   = 18 // the older request: TCP only, both families at once

	// Socket states, as sock_diag names them for every inet protocol.
	stateListen = 10 // TCP_LISTEN: a TCP socket after listen(2)
	stateClose  = 7  // TCP_CLOSE: a UDP socket that is bound but not connected

	nlmsgHdrLen       = 16
	inetDiagReqLen    = 56 // struct inet_diag_req_v2
	inetDiagReqOldLen = 60 // struct inet_diag_req, TCPDIAG_GETSOCK's
	maxRequestLen     = nlmsgHdrLen + inetDiagReqOldLen
	inetDiagMsgLen    = 72 // struct inet_diag_msg, before its attributes
)

// Protocol names a Listener's transport.
const (
	TCP = "tcp"
	UDP = "udp"
)

// query is one dump: its request type, a family (0 for both) and a
// protocol, and the states that make a socket a listener of that protocol.
type query struct {
	msgType  uint16 // sockDiagByFamily, or tcpdiagGetSock for both families' TCP
	family   uint8
	protocol uint8
	states   uint32 // bit 1<<state for each state wanted
}

// queries are the dumps of one scan of a namespace. Each walks a whole
// kernel hash table (every namespace's sockets, 16384 buckets on a
// guest of a few GiB), and that walk is most of a scan's cost, so TCP
// is asked with the older TCPDIAG_GETSOCK request, which answers both
// families in one walk; UDP has no such request and takes one per family.
//
// TCP counts a socket in LISTEN. UDP counts a socket that is bound to a
// port and not connected (the kernel's TCP_CLOSE state for UDP): it takes
// datagrams from anyone, which is what a UDP server does; a connected UDP
// socket (a DNS client's, say) is in ESTABLISHED and is left out.
var queries = []query{
	{tcpdiagGetSock, 0, ipprotoTCP, 1 << stateListen},
	{sockDiagByFamily, afInet, ipprotoUDP, 1 << stateClose},
	{sockDiagByFamily, afInet6, ipprotoUDP, 1 << stateClose},
}

// queriesV2 are queries without the older request, for a kernel that
// refuses it: TCP takes a walk per family.
var queriesV2 = []query{
	{sockDiagByFamily, afInet, ipprotoTCP, 1 << stateListen},
	{sockDiagByFamily, afInet6, ipprotoTCP, 1 << stateListen},
	{sockDiagByFamily, afInet, ipprotoUDP, 1 << stateClose},
	{sockDiagByFamily, afInet6, ipprotoUDP, 1 << stateClose},
}

// encodeRequest writes q's dump request with sequence number seq into buf,
// which must hold maxRequestLen bytes, and returns that slice of it.
func encodeRequest(buf []byte, q query, seq uint32) []byte {
	n := nlmsgHdrLen + inetDiagReqLen
	if q.msgType == tcpdiagGetSock {
		n = nlmsgHdrLen + inetDiagReqOldLen
	}
	b := buf[:n]
	clear(b)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(n))
	ne.PutUint16(b[4:], q.msgType)
	ne.PutUint16(b[6:], nlmFRequest|nlmFDump)
	ne.PutUint32(b[8:], seq)
	// b[12:16], the port id: 0, the kernel fills it in.
	if q.msgType == tcpdiagGetSock {
		// inet_diag_req: family, src_len, dst_len, ext (the protocol is
		// the request type's, the family ignored for a dump), then the
		// all-zero inet_diag_sockid (any socket), states and dbs.
		b[16] = q.family
		ne.PutUint32(b[20+48:], q.states)
		return b
	}
	// inet_diag_req_v2: family, protocol, ext and pad (no extensions
	// wanted), states, then the all-zero inet_diag_sockid.
	b[16] = q.family
	b[17] = q.protocol
	ne.PutUint32(b[20:], q.states)
	return b
}

// errDumpInterrupted says the kernel's socket tables changed under the
// dump (NLM_F_DUMP_INTR), so the reply may miss sockets: scan again.
var errDumpInterrupted = errors.New("sock_diag dump interrupted by a concurrent change")

// parseReply reads one datagram of a dump reply to q with sequence number
// seq, appends the listeners it describes to dst, and says whether the
// datagram ended the dump. Messages with another sequence number (left
// over from an earlier, abandoned dump) are skipped.
func parseReply(b []byte, q query, seq uint32, dst []Listener) (out []Listener, done bool, err error) {
	ne := binary.NativeEndian
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return dst, false, fmt.Errorf("sock_diag reply: %d trailing bytes, short of a message header", len(b))
		}
		length := ne.Uint32(b[0:])
		typ := ne.Uint16(b[4:])
		flags := ne.Uint16(b[6:])
		msgSeq := ne.Uint32(b[8:])
		if length < nlmsgHdrLen || uint64(length) > uint64(len(b)) {
			return dst, false, fmt.Errorf("sock_diag reply: message length %d out of range (%d bytes left)", length, len(b))
		}
		msg := b[nlmsgHdrLen:length]
		// The next message starts at the length rounded up to 4 (NLMSG_ALIGN).
		b = b[min((uint64(length)+3)&^3, uint64(len(b))):]
		if msgSeq != seq {
			continue
		}
		if flags&nlmFDumpIntr != 0 {
			return dst, false, errDumpInterrupted
		}
		switch typ {
		case nlmsgDone:
			return dst, true, nil
		case nlmsgError:
			if len(msg) < 4 {
				return dst, false, errors.New("sock_diag reply: error message too short")
			}
			if errno := int32(ne.Uint32(msg)); errno != 0 {
				return dst, false, fmt.Errorf("sock_diag dump: %w", syscall.Errno(-errno))
			}
			return dst, true, nil // an ack, not an error
		case q.msgType:
			l, ok, err := parseDiagMsg(msg, q)
			if err != nil {
				return dst, false, err
			}
			if ok {
				dst = append(dst, l)
			}
		}
	}
	return dst, false, nil
}

// parseDiagMsg reads one inet_diag_msg. It reports ok false for a socket
// that is not a listener of q's kind: the kernel filters by state already,
// and this check also drops a UDP socket with a peer, or one not bound to
// a port, whatever the kernel sends.
func parseDiagMsg(m []byte, q query) (l Listener, ok bool, err error) {
	if len(m) < inetDiagMsgLen {
		return Listener{}, false, fmt.Errorf("sock_diag reply: socket record of %d bytes, want at least %d", len(m), inetDiagMsgLen)
	}
	family, state := m[0], m[1]
	if family != afInet && family != afInet6 || q.family != 0 && family != q.family {
		return Listener{}, false, fmt.Errorf("sock_diag reply: socket of family %d in a dump of family %d", family, q.family)
	}
	if state >= 32 || q.states&(1<<state) == 0 {
		return Listener{}, false, nil
	}
	id := m[4:52] // inet_diag_sockid
	sport := binary.BigEndian.Uint16(id[0:])
	dport := binary.BigEndian.Uint16(id[2:])
	if sport == 0 || dport != 0 {
		return Listener{}, false, nil
	}
	var addr netip.Addr
	if family == afInet {
		addr = netip.AddrFrom4([4]byte(id[4:8]))
	} else {
		addr = netip.AddrFrom16([16]byte(id[4:20]))
	}
	proto := TCP
	if q.protocol == ipprotoUDP {
		proto = UDP
	}
	return Listener{Protocol: proto, Address: addr, Port: sport}, true, nil
}
