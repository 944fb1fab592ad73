package portwatch

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// nlmsg builds one netlink message: header, payload, padding to 4 bytes.
func nlmsg(typ, flags uint16, seq uint32, payload []byte) []byte {
	n := nlmsgHdrLen + len(payload)
	b := make([]byte, (n+3)&^3)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(n))
	ne.PutUint16(b[4:], typ)
	ne.PutUint16(b[6:], flags)
	ne.PutUint32(b[8:], seq)
	copy(b[nlmsgHdrLen:], payload)
	return b
}

// diagRecord builds an inet_diag_msg for a socket bound to src:sport with
// peer dport, followed by attrs (the kernel always adds a few).
func diagRecord(family, state uint8, src netip.Addr, sport, dport uint16, attrs []byte) []byte {
	b := make([]byte, inetDiagMsgLen, inetDiagMsgLen+len(attrs))
	b[0], b[1] = family, state
	binary.BigEndian.PutUint16(b[4:], sport)
	binary.BigEndian.PutUint16(b[6:], dport)
	copy(b[8:24], src.AsSlice())
	binary.NativeEndian.PutUint32(b[68:], 12345) // inode
	return append(b, attrs...)
}

// errMsg builds an NLMSG_ERROR payload for errno (0 is an ack).
func errMsg(errno syscall.Errno) []byte {
	b := make([]byte, 4+nlmsgHdrLen)
	binary.NativeEndian.PutUint32(b, uint32(-int32(errno)))
	return b
}

func cat(parts ...[]byte) []byte { return slices.Concat(parts...) }

var (
	tcpAll  = queries[0]
	udpV4   = queries[1]
	udpV6   = queries[2]
	lo4     = netip.MustParseAddr("127.0.0.1")
	any6    = netip.IPv6Unspecified()
	shutdwn = []byte{5, 0, 8, 0, 0, 0, 0, 0} // INET_DIAG_SHUTDOWN: a 5-byte attribute, padded
)

func TestEncodeRequest(t *testing.T) {
	buf := make([]byte, maxRequestLen)
	ne := binary.NativeEndian

	b := encodeRequest(buf, udpV6, 7)
	if len(b) != nlmsgHdrLen+inetDiagReqLen {
		t.Fatalf("v2 request is %d bytes, want %d", len(b), nlmsgHdrLen+inetDiagReqLen)
	}
	if got := ne.Uint32(b[0:]); got != uint32(len(b)) {
		t.Errorf("length field %d, want %d", got, len(b))
	}
	if ne.Uint16(b[4:]) != sockDiagByFamily || ne.Uint16(b[6:]) != nlmFRequest|nlmFDump || ne.Uint32(b[8:]) != 7 {
		t.Errorf("header % x: want SOCK_DIAG_BY_FAMILY, REQUEST|DUMP, seq 7", b[:16])
	}
	if b[16] != afInet6 || b[17] != ipprotoUDP || ne.Uint32(b[20:]) != 1<<stateClose {
		t.Errorf("body % x: want AF_INET6, UDP, states 1<<7", b[16:24])
	}

	for i := range buf {
		buf[i] = 0xff // encodeRequest must clear what it does not set
	}
	b = encodeRequest(buf, tcpAll, 8)
	if len(b) != nlmsgHdrLen+inetDiagReqOldLen {
		t.Fatalf("compat request is %d bytes, want %d", len(b), nlmsgHdrLen+inetDiagReqOldLen)
	}
	if ne.Uint16(b[4:]) != tcpdiagGetSock || ne.Uint32(b[8:]) != 8 {
		t.Errorf("header % x: want TCPDIAG_GETSOCK, seq 8", b[:16])
	}
	if got := ne.Uint32(b[68:]); got != 1<<stateListen {
		t.Errorf("states %#x, want 1<<10", got)
	}
	for i, c := range b[16:68] {
		if c != 0 {
			t.Fatalf("byte %d of the compat body is %#x, want 0 (any family, any socket)", 16+i, c)
		}
	}
	if ne.Uint32(b[72:]) != 0 {
		t.Errorf("dbs % x, want 0", b[72:])
	}
}

func TestParseReply(t *testing.T) {
	const seq = 42
	tcpRec := func(fam uint8, a netip.Addr, port uint16) []byte {
		return nlmsg(tcpdiagGetSock, nlmFMulti, seq, diagRecord(fam, stateListen, a, port, 0, shutdwn))
	}
	done := nlmsg(nlmsgDone, nlmFMulti, seq, []byte{0, 0, 0, 0})
	for _, tc := range []struct {
		name     string
		q        query
		in       []byte
		want     []Listener
		wantDone bool
		wantErr  string
	}{
		{
			name: "both families of TCP in one datagram, then done",
			q:    tcpAll,
			in:   cat(tcpRec(afInet, lo4, 8080), tcpRec(afInet6, any6, 443), done),
			want: []Listener{
				{Protocol: TCP, Address: lo4, Port: 8080},
				{Protocol: TCP, Address: any6, Port: 443},
			},
			wantDone: true,
		},
		{
			name: "a datagram without done: more to read",
			q:    tcpAll,
			in:   tcpRec(afInet, lo4, 22),
			want: []Listener{{Protocol: TCP, Address: lo4, Port: 22}},
		},
		{
			name: "unconnected UDP kept, connected and portless dropped",
			q:    udpV4,
			in: cat(
				nlmsg(sockDiagByFamily, nlmFMulti, seq, diagRecord(afInet, stateClose, lo4, 53, 0, nil)),
				nlmsg(sockDiagByFamily, nlmFMulti, seq, diagRecord(afInet, stateClose, lo4, 5353, 53, nil)),
				nlmsg(sockDiagByFamily, nlmFMulti, seq, diagRecord(afInet, stateClose, lo4, 0, 0, nil)),
				nlmsg(sockDiagByFamily, nlmFMulti, seq, diagRecord(afInet, 1, lo4, 999, 0, nil)), // ESTABLISHED
				done),
			want:     []Listener{{Protocol: UDP, Address: lo4, Port: 53}},
			wantDone: true,
		},
		{
			name: "messages of an abandoned dump are skipped",
			q:    udpV6,
			in: cat(
				nlmsg(sockDiagByFamily, nlmFMulti, seq-1, diagRecord(afInet6, stateClose, any6, 1, 0, nil)),
				nlmsg(nlmsgDone, nlmFMulti, seq-1, []byte{0, 0, 0, 0}),
				nlmsg(sockDiagByFamily, nlmFMulti, seq, diagRecord(afInet6, stateClose, any6, 2, 0, nil))),
			want: []Listener{{Protocol: UDP, Address: any6, Port: 2}},
		},
		{
			name:     "empty dump",
			q:        udpV4,
			in:       done,
			wantDone: true,
		},
		{
			name:     "an ack ends it",
			q:        udpV4,
			in:       nlmsg(nlmsgError, 0, seq, errMsg(0)),
			wantDone: true,
		},
		{
			name:    "an error",
			q:       udpV4,
			in:      nlmsg(nlmsgError, 0, seq, errMsg(syscall.EBUSY)),
			wantErr: "sock_diag dump: device or resource busy",
		},
		{
			name:    "interrupted",
			q:       tcpAll,
			in:      nlmsg(tcpdiagGetSock, nlmFMulti|nlmFDumpIntr, seq, diagRecord(afInet, stateListen, lo4, 1, 0, nil)),
			wantErr: errDumpInterrupted.Error(),
		},
		{
			name:    "short header",
			q:       tcpAll,
			in:      make([]byte, 8),
			wantErr: "8 trailing bytes",
		},
		{
			name:    "length past the end",
			q:       tcpAll,
			in:      tcpRec(afInet, lo4, 1)[:40],
			wantErr: "message length 96 out of range",
		},
		{
			name:    "short record",
			q:       tcpAll,
			in:      nlmsg(tcpdiagGetSock, 0, seq, make([]byte, 40)),
			wantErr: "socket record of 40 bytes",
		},
		{
			name:    "family the dump did not ask for",
			q:       udpV4,
			in:      nlmsg(sockDiagByFamily, 0, seq, diagRecord(afInet6, stateClose, any6, 1, 0, nil)),
			wantErr: "socket of family 10 in a dump of family 2",
		},
		{
			name:     "other message types are ignored",
			q:        tcpAll,
			in:       cat(nlmsg(sockDiagByFamily, 0, seq, diagRecord(afInet, stateListen, lo4, 1, 0, nil)), done),
			wantDone: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, gotDone, err := parseReply(tc.in, tc.q, seq, nil)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) || gotDone != tc.wantDone {
				t.Errorf("got %v done=%v, want %v done=%v", got, gotDone, tc.want, tc.wantDone)
			}
		})
	}
}

func TestParseReplyErrno(t *testing.T) {
	_, _, err := parseReply(nlmsg(nlmsgError, 0, 1, errMsg(syscall.EPERM)), udpV4, 1, nil)
	if !errors.Is(err, syscall.EPERM) {
		t.Fatalf("err %v, want EPERM", err)
	}
}

// FuzzParseReply checks the parser never panics and that what it accepts
// is a listener of the dump's own kind: a protocol it asked for, a port,
// and an address of a family it asked for.
func FuzzParseReply(f *testing.F) {
	f.Add(cat(nlmsg(tcpdiagGetSock, nlmFMulti, 1, diagRecord(afInet, stateListen, lo4, 80, 0, shutdwn)),
		nlmsg(nlmsgDone, 0, 1, []byte{0, 0, 0, 0})), uint8(0))
	f.Add(nlmsg(sockDiagByFamily, nlmFMulti, 1, diagRecord(afInet6, stateClose, any6, 53, 0, nil)), uint8(2))
	f.Add(nlmsg(nlmsgError, 0, 1, errMsg(syscall.ENOENT)), uint8(1))
	f.Add([]byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, in []byte, which uint8) {
		q := queries[int(which)%len(queries)]
		got, _, _ := parseReply(in, q, 1, nil)
		for _, l := range got {
			wantProto := UDP
			if q.protocol == ipprotoTCP {
				wantProto = TCP
			}
			if l.Protocol != wantProto || l.Port == 0 || !l.Address.IsValid() || l.Sandbox != "" {
				t.Fatalf("accepted %+v from a %s dump", l, wantProto)
			}
			if q.family == afInet && !l.Address.Is4() || q.family == afInet6 && !l.Address.Is6() {
				t.Fatalf("accepted %v from a dump of family %d", l.Address, q.family)
			}
		}
	})
}
