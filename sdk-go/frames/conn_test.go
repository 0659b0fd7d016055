package frames

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/dimplugd/dimplugd/sdk-go/internal/testwait"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// pair returns both ends of a frame socket as Conns, closed at cleanup.
func pair(t testing.TB) (*Conn, *Conn) {
	t.Helper()
	a, f, err := Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	b, err := FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestConnRoundTripEveryVariant(t *testing.T) {
	a, b := pair(t)
	inline := bytes.Repeat([]byte("fmp4"), 1024)
	tests := []struct {
		name  string
		which schema.FrameMsg_Which
		fill  func(schema.FrameMsg) error
		check func(schema.FrameMsg) error
	}{
		{"poolAdd", schema.FrameMsg_Which_poolAdd,
			func(m schema.FrameMsg) error {
				p, err := m.NewPoolAdd()
				p.SetId(3)
				p.SetSize(1 << 20)
				p.SetOwner(9)
				return err
			},
			func(m schema.FrameMsg) error {
				p, err := m.PoolAdd()
				if err != nil || p.Id() != 3 || p.Size() != 1<<20 || p.Owner() != 9 {
					return fmt.Errorf("got %v %v", p, err)
				}
				return nil
			}},
		{"poolDrop", schema.FrameMsg_Which_poolDrop,
			func(m schema.FrameMsg) error {
				r, err := m.NewPoolDrop()
				r.SetOwner(2)
				r.SetPool(4)
				return err
			},
			func(m schema.FrameMsg) error {
				r, err := m.PoolDrop()
				if err != nil || r.Owner() != 2 || r.Pool() != 4 {
					return fmt.Errorf("got %v %v", r, err)
				}
				return nil
			}},
		{"open", schema.FrameMsg_Which_open,
			func(m schema.FrameMsg) error {
				o, err := m.NewOpen()
				if err != nil {
					return err
				}
				o.SetStream(11)
				must(t, o.SetKind("video/segment"))
				must(t, o.SetRole("transform"))
				must(t, o.SetStage("watermark"))
				meta, err := o.NewMeta()
				if err != nil {
					return err
				}
				meta.SetMediaId(-5)
				must(t, meta.SetTrack("v0"))
				must(t, meta.SetCodec("avc1.64001f"))
				meta.SetTimescale(90000)
				ex, err := meta.NewExtra(2)
				if err != nil {
					return err
				}
				must(t, ex.At(0).SetKey("lang"))
				must(t, ex.At(0).SetValue("en"))
				must(t, ex.At(1).SetKey("hdr"))
				must(t, ex.At(1).SetValue("pq"))
				return nil
			},
			func(m schema.FrameMsg) error {
				o, err := m.Open()
				if err != nil {
					return err
				}
				kind, _ := o.Kind()
				role, _ := o.Role()
				stage, _ := o.Stage()
				meta, err := o.Meta()
				if err != nil {
					return err
				}
				track, _ := meta.Track()
				codec, _ := meta.Codec()
				ex, err := meta.Extra()
				if err != nil {
					return err
				}
				k1, _ := ex.At(1).Key()
				v1, _ := ex.At(1).Value()
				got := fmt.Sprintln(o.Stream(), kind, role, stage, meta.MediaId(), track, codec, meta.Timescale(), ex.Len(), k1, v1)
				if want := "11 video/segment transform watermark -5 v0 avc1.64001f 90000 2 hdr pq\n"; got != want {
					return fmt.Errorf("got %q, want %q", got, want)
				}
				return nil
			}},
		{"opened", schema.FrameMsg_Which_opened,
			func(m schema.FrameMsg) error {
				o, err := m.NewOpened()
				if err != nil {
					return err
				}
				o.SetStream(12)
				l, err := o.NewStages(2)
				must(t, l.Set(0, "wm/video"))
				must(t, l.Set(1, "stats/video"))
				return err
			},
			func(m schema.FrameMsg) error {
				o, err := m.Opened()
				if err != nil {
					return err
				}
				l, err := o.Stages()
				if err != nil || o.Stream() != 12 || l.Len() != 2 {
					return fmt.Errorf("got %v %v", o, err)
				}
				if s, _ := l.At(1); s != "stats/video" {
					return fmt.Errorf("stage 1 is %q", s)
				}
				return nil
			}},
		{"frame/ref", schema.FrameMsg_Which_frame,
			func(m schema.FrameMsg) error {
				f, err := m.NewFrame()
				if err != nil {
					return err
				}
				f.SetStream(1)
				f.SetSeq(42)
				f.SetPts(-1000)
				f.SetDts(-2000)
				f.SetDuration(3000)
				f.SetKeyFrame(true)
				f.SetPart(1)
				f.SetParts(3)
				must(t, f.SetContentType("video/iso.segment"))
				r, err := f.Data().NewRef()
				r.SetOwner(5)
				r.SetPool(6)
				r.SetOffset(1 << 40)
				r.SetLength(100 << 20)
				return err
			},
			func(m schema.FrameMsg) error {
				f, err := m.Frame()
				if err != nil {
					return err
				}
				if f.Data().Which() != schema.Frame_data_Which_ref {
					return fmt.Errorf("data is %v", f.Data().Which())
				}
				r, err := f.Data().Ref()
				if err != nil {
					return err
				}
				ct, _ := f.ContentType()
				got := fmt.Sprintln(f.Stream(), f.Seq(), f.Pts(), f.Dts(), f.Duration(), f.KeyFrame(), f.Part(), f.Parts(), ct, r.Owner(), r.Pool(), r.Offset(), r.Length())
				if want := fmt.Sprintln(1, 42, -1000, -2000, 3000, true, 1, 3, "video/iso.segment", 5, 6, 1<<40, 100<<20); got != want {
					return fmt.Errorf("got %q, want %q", got, want)
				}
				return nil
			}},
		{"frame/inline", schema.FrameMsg_Which_frame,
			func(m schema.FrameMsg) error {
				f, err := m.NewFrame()
				if err != nil {
					return err
				}
				f.SetSeq(7)
				return f.Data().SetInline(inline)
			},
			func(m schema.FrameMsg) error {
				f, err := m.Frame()
				if err != nil {
					return err
				}
				d, err := f.Data().Inline()
				if err != nil || f.Data().Which() != schema.Frame_data_Which_inline || !bytes.Equal(d, inline) {
					return fmt.Errorf("inline data differs (%d bytes, %v)", len(d), err)
				}
				return nil
			}},
		{"release", schema.FrameMsg_Which_release,
			func(m schema.FrameMsg) error {
				r, err := m.NewRelease()
				r.SetPool(8)
				r.SetOffset(4096)
				r.SetLength(128)
				return err
			},
			func(m schema.FrameMsg) error {
				r, err := m.Release()
				if err != nil || r.Pool() != 8 || r.Offset() != 4096 || r.Length() != 128 || r.Owner() != 0 {
					return fmt.Errorf("got %v %v", r, err)
				}
				return nil
			}},
		{"end", schema.FrameMsg_Which_end,
			func(m schema.FrameMsg) error {
				e, err := m.NewEnd()
				if err != nil {
					return err
				}
				e.SetStream(13)
				e.SetCancel(true)
				return e.SetError("plugin crashed")
			},
			func(m schema.FrameMsg) error {
				e, err := m.End()
				if err != nil {
					return err
				}
				msg, _ := e.Error()
				if e.Stream() != 13 || !e.Cancel() || msg != "plugin crashed" {
					return fmt.Errorf("got %v", e)
				}
				return nil
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, dir := range []struct {
				name     string
				from, to *Conn
			}{{"a→b", a, b}, {"b→a", b, a}} {
				must(t, dir.from.Send(tt.fill))
				msg, m, files, err := dir.to.Recv()
				if err != nil {
					t.Fatalf("%s: %v", dir.name, err)
				}
				if len(files) != 0 {
					t.Errorf("%s: %d files, want none", dir.name, len(files))
				}
				if m.Which() != tt.which {
					t.Errorf("%s: got %v, want %v", dir.name, m.Which(), tt.which)
				}
				if err := tt.check(m); err != nil {
					t.Errorf("%s: %v", dir.name, err)
				}
				msg.Release()
			}
		})
	}
}

func TestConnSendFillError(t *testing.T) {
	a, _ := pair(t)
	boom := errors.New("boom")
	err := a.Send(func(m schema.FrameMsg) error { m.NewEnd(); return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want boom", err)
	}
}

func TestConnPassesPoolFD(t *testing.T) {
	a, b := pair(t)
	p, err := NewPool(3, 1<<20)
	must(t, err)
	defer p.Close()
	copy(p.Bytes()[4096:], "hello from the producer")

	must(t, a.Send(func(m schema.FrameMsg) error {
		pa, err := m.NewPoolAdd()
		pa.SetId(p.ID())
		pa.SetSize(uint64(p.Size()))
		return err
	}, p.File()))
	msg, m, files, err := b.Recv()
	must(t, err)
	pa, err := m.PoolAdd()
	must(t, err)
	id, size := pa.Id(), int64(pa.Size())
	msg.Release()
	if len(files) != 1 {
		t.Fatalf("got %d files, want 1", len(files))
	}
	flags, err := unix.FcntlInt(files[0].Fd(), unix.F_GETFD, 0)
	must(t, err)
	if flags&unix.FD_CLOEXEC == 0 {
		t.Error("received fd is not close-on-exec")
	}

	maps := NewMappings()
	defer maps.Close()
	must(t, maps.Add(1, id, files[0], size))
	view, err := maps.Bytes(1, id, 4096, 23)
	must(t, err)
	if string(view) != "hello from the producer" {
		t.Fatalf("consumer sees %q", view)
	}
	copy(p.Bytes()[4096:], "HELLO") // shared, not copied
	if string(view[:5]) != "HELLO" {
		t.Fatalf("consumer sees %q after the producer wrote", view[:5])
	}
}

func TestConnSendSeveralFDs(t *testing.T) {
	a, b := pair(t)
	var pools []*os.File
	for i := range 3 {
		p, err := NewPool(uint32(i+1), 4096)
		must(t, err)
		defer p.Close()
		p.Bytes()[0] = byte(i + 10)
		pools = append(pools, p.File())
	}
	must(t, a.Send(func(m schema.FrameMsg) error { _, err := m.NewPoolAdd(); return err }, pools...))
	msg, _, files, err := b.Recv()
	must(t, err)
	msg.Release()
	if len(files) != 3 {
		t.Fatalf("got %d files", len(files))
	}
	maps := NewMappings()
	defer maps.Close()
	for i, f := range files {
		must(t, maps.Add(1, uint32(i+1), f, 4096))
		v, err := maps.Bytes(1, uint32(i+1), 0, 1)
		must(t, err)
		if v[0] != byte(i+10) {
			t.Errorf("file %d: got %d", i, v[0])
		}
	}
	tooMany := make([]*os.File, MaxFDs+1)
	for i := range tooMany {
		tooMany[i] = pools[0]
	}
	if err := a.Send(func(schema.FrameMsg) error { return nil }, tooMany...); err == nil {
		t.Error("sending more than MaxFDs succeeded")
	}
}

func TestConnMaxPacket(t *testing.T) {
	a, b := pair(t)
	tests := []struct {
		name   string
		inline int
		ok     bool
	}{
		{"small", 4 << 10, true},
		{"just fits", MaxPacket - 8 - 128, true}, // framing + FrameMsg + Frame + pointers
		{"packet limit", MaxPacket, false},
		{"far above", 1 << 20, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := bytes.Repeat([]byte{0xab}, tt.inline)
			err := a.Send(func(m schema.FrameMsg) error {
				f, err := m.NewFrame()
				if err != nil {
					return err
				}
				return f.Data().SetInline(data)
			})
			if !tt.ok {
				if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), fmt.Sprint(MaxPacket)) {
					t.Fatalf("got %v, want ErrTooLarge naming the limit", err)
				}
				t.Log(err)
				return
			}
			must(t, err)
			msg, m, _, err := b.Recv()
			must(t, err)
			defer msg.Release()
			f, _ := m.Frame()
			got, _ := f.Data().Inline()
			if !bytes.Equal(got, data) {
				t.Fatalf("inline frame of %d bytes differs", len(data))
			}
		})
	}
}

// A peer that breaks the protocol gets clear errors, and the connection
// stays usable for the packets after.
func TestConnRecvBadPackets(t *testing.T) {
	ours, theirs, err := Socketpair()
	must(t, err)
	defer ours.Close()
	defer theirs.Close()
	fd := int(theirs.Fd())
	for _, tt := range []struct {
		name   string
		packet []byte
		want   string
	}{
		{"too large", make([]byte, MaxPacket+1), "packet larger than"},
		{"garbage", []byte{1, 2, 3}, "packet of 3 bytes"},
		{"short segment", []byte{0, 0, 0, 0, 9, 0, 0, 0}, "packet of 8 bytes"},
	} {
		_, err := unix.Write(fd, tt.packet)
		must(t, err)
		_, _, _, err = ours.Recv()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want %q", tt.name, err, tt.want)
		}
	}
	peer, err := FileConn(theirs)
	must(t, err)
	defer peer.Close()
	must(t, peer.Send(func(m schema.FrameMsg) error { _, err := m.NewEnd(); return err }))
	msg, m, _, err := ours.Recv()
	must(t, err)
	defer msg.Release()
	if m.Which() != schema.FrameMsg_Which_end {
		t.Fatalf("got %v", m.Which())
	}
}

func TestConnEOF(t *testing.T) {
	a, b := pair(t)
	must(t, a.Send(func(m schema.FrameMsg) error { _, err := m.NewEnd(); return err }))
	a.Close()
	msg, _, _, err := b.Recv() // what was sent before the close still arrives
	must(t, err)
	msg.Release()
	for range 2 {
		if _, _, _, err := b.Recv(); err != io.EOF {
			t.Fatalf("got %v, want io.EOF", err)
		}
	}
	if err := b.Send(func(m schema.FrameMsg) error { _, err := m.NewEnd(); return err }); err == nil {
		t.Fatal("send to a closed peer succeeded")
	} else {
		t.Log(err)
	}
}

func TestConnRecvAfterClose(t *testing.T) {
	a, _ := pair(t)
	a.Close()
	if _, _, _, err := a.Recv(); err == nil || err == io.EOF {
		t.Fatalf("got %v, want an error other than EOF", err)
	}
}

func TestConnConcurrentSend(t *testing.T) {
	a, b := pair(t)
	const senders, each = 8, 300
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for g := range senders {
		wg.Go(func() {
			for i := range each {
				err := a.Send(func(m schema.FrameMsg) error {
					f, err := m.NewFrame()
					if err != nil {
						return err
					}
					f.SetStream(uint64(g))
					f.SetSeq(uint64(i))
					// Vary the size so that packets of different lengths interleave.
					return f.Data().SetInline(bytes.Repeat([]byte{byte(g)}, (i%7)*1000))
				})
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	next := make([]uint64, senders)
	for range senders * each {
		msg, m, _, err := b.Recv()
		must(t, err)
		f, err := m.Frame()
		must(t, err)
		g, seq := f.Stream(), f.Seq()
		d, _ := f.Data().Inline()
		if seq != next[g] {
			t.Fatalf("sender %d: got seq %d, want %d", g, seq, next[g])
		}
		if len(d) != int(seq%7)*1000 || (len(d) > 0 && (d[0] != byte(g) || d[len(d)-1] != byte(g))) {
			t.Fatalf("sender %d seq %d: packet mixed up", g, seq)
		}
		next[g]++
		msg.Release()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestFileConnRejectsStreamSocket(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	must(t, err)
	f0, f1 := os.NewFile(uintptr(fds[0]), "s0"), os.NewFile(uintptr(fds[1]), "s1")
	defer f0.Close()
	defer f1.Close()
	if c, err := FileConn(f0); err == nil {
		c.Close()
		t.Fatal("FileConn accepted a stream socket")
	} else {
		t.Log(err)
	}
}

// streamPair returns a connected pair of SOCK_STREAM Unix sockets, as the
// daemon's socket and a host's connection to it.
func streamPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	must(t, err)
	var cs [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "stream")
		c, err := net.FileConn(f)
		f.Close()
		must(t, err)
		cs[i] = c.(*net.UnixConn)
		t.Cleanup(func() { cs[i].Close() })
	}
	return cs[0], cs[1]
}

func TestSendRecvFDHandshake(t *testing.T) {
	daemon, host := streamPair(t)

	// host → daemon: the preamble.
	_, err := host.Write([]byte("DPFRAME2\n"))
	must(t, err)
	pre := make([]byte, 9)
	_, err = io.ReadFull(daemon, pre)
	must(t, err)
	if string(pre) != "DPFRAME2\n" {
		t.Fatalf("preamble %q", pre)
	}

	// daemon → host: one byte and the host's frame socket.
	ours, theirs, err := Socketpair()
	must(t, err)
	defer ours.Close()
	must(t, SendFD(daemon, []byte{0}, theirs))
	theirs.Close()

	var b [1]byte
	n, f, err := RecvFD(host, b[:])
	must(t, err)
	if n != 1 || b[0] != 0 || f == nil {
		t.Fatalf("got %d bytes %v, file %v", n, b, f)
	}
	hostConn, err := FileConn(f)
	f.Close()
	must(t, err)
	defer hostConn.Close()

	must(t, hostConn.Send(func(m schema.FrameMsg) error {
		o, err := m.NewOpen()
		o.SetStream(77)
		return err
	}))
	msg, m, _, err := ours.Recv()
	must(t, err)
	o, _ := m.Open()
	if o.Stream() != 77 {
		t.Fatalf("daemon got stream %d", o.Stream())
	}
	msg.Release()

	// A refusal without a descriptor, then EOF.
	must(t, SendFD(daemon, []byte{1}, nil))
	n, f, err = RecvFD(host, b[:])
	if err != nil || n != 1 || b[0] != 1 || f != nil {
		t.Fatalf("refusal: got %d %v %v %v", n, b, f, err)
	}
	daemon.Close()
	if _, _, err := RecvFD(host, b[:]); err != io.EOF {
		t.Fatalf("got %v, want io.EOF", err)
	}
}

// A sender to a peer that does not read blocks (the socket buffer is the
// only queue) and resumes when the peer reads.
func TestConnSendBlocksOnSlowPeer(t *testing.T) {
	a, b := pair(t)
	const count = 64
	payload := bytes.Repeat([]byte{7}, 64<<10)
	var sent sync.WaitGroup
	progress := make(chan int, count)
	sent.Go(func() { // ends: b reads every packet
		for i := range count {
			err := a.Send(func(m schema.FrameMsg) error {
				f, err := m.NewFrame()
				if err != nil {
					return err
				}
				f.SetSeq(uint64(i))
				return f.Data().SetInline(payload)
			})
			if err != nil {
				t.Error(err)
				return
			}
			progress <- i
		}
	})
	time.Sleep(50 * time.Millisecond)
	if n := len(progress); n >= count {
		t.Fatalf("all %d packets of 64 KiB sent without a reader", n)
	} else {
		t.Logf("%d packets of 64 KiB queued before the sender blocked", n)
	}
	for i := range count {
		msg, m, _, err := b.Recv()
		must(t, err)
		f, _ := m.Frame()
		if f.Seq() != uint64(i) {
			t.Fatalf("got seq %d, want %d", f.Seq(), i)
		}
		msg.Release()
	}
	sent.Wait()
}

func sendSeq(c *Conn, seq uint64, size int, buffer bool) error {
	fill := func(m schema.FrameMsg) error {
		f, err := m.NewFrame()
		if err != nil {
			return err
		}
		f.SetSeq(seq)
		return f.Data().SetInline(bytes.Repeat([]byte{byte(seq)}, size))
	}
	if buffer {
		return c.Buffer(fill)
	}
	return c.Send(fill)
}

// packets reads raw packets from a frame socket's other end until it has
// seen want messages, and returns how many packets carried them.
func countPackets(t *testing.T, f *os.File, want int) (packets int, seqs []uint64) {
	t.Helper()
	buf := make([]byte, MaxPacket)
	for len(seqs) < want {
		n, err := unix.Read(int(f.Fd()), buf)
		must(t, err)
		packets++
		for b := buf[:n]; len(b) > 0; {
			l, err := messageLen(b)
			must(t, err)
			msg, m, err := readMsg(b[:l])
			must(t, err)
			fr, _ := m.Frame()
			seqs = append(seqs, fr.Seq())
			msg.Release()
			b = b[l:]
		}
	}
	return packets, seqs
}

func readMsg(b []byte) (*capnp.Message, schema.FrameMsg, error) {
	msg, err := capnp.Unmarshal(b)
	if err != nil {
		return nil, schema.FrameMsg{}, err
	}
	m, err := schema.ReadRootFrameMsg(msg)
	return msg, m, err
}

// Buffered messages travel back to back in one packet, split only where
// the batch would pass BatchMax, and arrive one by one, in order.
func TestConnBufferBatchesIntoPackets(t *testing.T) {
	tests := []struct {
		name        string
		count, size int
		packets     int
	}{
		{"small frames", 40, 100, 1},
		{"4 KiB frames", 40, 4 << 10, 3}, // 15 per 64 KiB packet
		{"one large message alone", 1, 100 << 10, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, theirs, err := Socketpair()
			must(t, err)
			defer a.Close()
			defer theirs.Close()
			for i := range tt.count {
				must(t, sendSeq(a, uint64(i), tt.size, true))
			}
			must(t, a.Flush())
			packets, seqs := countPackets(t, theirs, tt.count)
			if packets != tt.packets {
				t.Errorf("%d messages of %d bytes took %d packets, want %d", tt.count, tt.size, packets, tt.packets)
			}
			for i, s := range seqs {
				if s != uint64(i) {
					t.Fatalf("message %d has seq %d", i, s)
				}
			}
		})
	}
}

// A peer reads batched packets message by message; a message with a
// descriptor gets a packet of its own, in its place in the order, and only
// it gets the descriptor.
func TestConnBatchesAroundDescriptors(t *testing.T) {
	a, b := pair(t)
	p, err := NewPool(9, 4096)
	must(t, err)
	defer p.Close()
	must(t, sendSeq(a, 0, 10, true))
	must(t, sendSeq(a, 1, 10, true))
	must(t, a.Send(func(m schema.FrameMsg) error {
		pa, err := m.NewPoolAdd()
		pa.SetId(p.ID())
		return err
	}, p.File()))
	must(t, sendSeq(a, 2, 10, true))
	must(t, sendSeq(a, 3, 10, false))
	var got []string
	for range 5 {
		msg, m, files, err := b.Recv()
		must(t, err)
		switch m.Which() {
		case schema.FrameMsg_Which_frame:
			f, _ := m.Frame()
			got = append(got, fmt.Sprintf("frame %d (%d files)", f.Seq(), len(files)))
		default:
			got = append(got, fmt.Sprintf("%s (%d files)", m.Which(), len(files)))
		}
		closeFiles(files)
		msg.Release()
	}
	want := "frame 0 (0 files), frame 1 (0 files), poolAdd (1 files), frame 2 (0 files), frame 3 (0 files)"
	if s := strings.Join(got, ", "); s != want {
		t.Fatalf("got  %s\nwant %s", s, want)
	}
}

// Goroutines sending while a write waits for a full socket share packets:
// fewer packets than messages, each sender's messages in its order.
func TestConnConcurrentSendsCombine(t *testing.T) {
	a, theirs, err := Socketpair()
	must(t, err)
	defer a.Close()
	defer theirs.Close()
	const senders, each = 4, 500
	var wg sync.WaitGroup
	for g := range senders {
		wg.Go(func() {
			for i := range each {
				if err := sendSeq(a, uint64(g)<<32|uint64(i), 4<<10, false); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	time.Sleep(50 * time.Millisecond) // 8 MiB: the socket fills, the senders wait
	packets, seqs := countPackets(t, theirs, senders*each)
	wg.Wait()
	next := make([]uint64, senders)
	for _, s := range seqs {
		g, i := s>>32, s&(1<<32-1)
		if i != next[g] {
			t.Fatalf("sender %d: got %d, want %d", g, i, next[g])
		}
		next[g]++
	}
	t.Logf("%d messages from %d goroutines in %d packets", len(seqs), senders, packets)
	if packets >= len(seqs) {
		t.Errorf("%d messages took %d packets: no batching", len(seqs), packets)
	}
}

// A packet whose second message is broken fails that Recv only; the
// connection goes on with the next packet.
func TestConnRecvBrokenMessageInBatch(t *testing.T) {
	ours, theirs, err := Socketpair()
	must(t, err)
	defer ours.Close()
	defer theirs.Close()
	peer, err := FileConn(theirs)
	must(t, err)
	defer peer.Close()
	must(t, sendSeq(peer, 1, 10, true))
	peer.wmu.Lock()
	good := append([]byte(nil), peer.batch...)
	peer.wmu.Unlock()
	must(t, peer.Flush())
	msg, _, _, err := ours.Recv()
	must(t, err)
	msg.Release()

	packet := append(append([]byte(nil), good...), 0, 0, 0, 0, 200, 0, 0, 0) // claims 200 words
	_, err = unix.Write(int(theirs.Fd()), packet)
	must(t, err)
	msg, m, _, err := ours.Recv()
	must(t, err)
	if f, _ := m.Frame(); f.Seq() != 1 {
		t.Fatalf("first message: seq %d", f.Seq())
	}
	msg.Release()
	if _, _, _, err := ours.Recv(); err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("got %v, want an error about the broken message", err)
	}
	must(t, sendSeq(peer, 7, 10, false))
	msg, m, _, err = ours.Recv()
	must(t, err)
	if f, _ := m.Frame(); f.Seq() != 7 {
		t.Fatalf("after the broken packet: seq %d", f.Seq())
	}
	msg.Release()
}

// A message Send leaves to another goroutine's write in progress is on the
// socket once Sync returns: a sender that closes right after (a daemon
// saying goodbye) does not lose it.
func TestConnSyncWaitsForAnotherWriter(t *testing.T) {
	a, b := pair(t)
	var flushed sync.WaitGroup
	flushed.Go(func() { // blocks in its write until b reads; fails once a closes
		for i := range 64 {
			if sendSeq(a, uint64(i), 60<<10, true) != nil {
				return
			}
		}
		_ = a.Flush()
	})
	testwait.Until(t, "a write to block on the full socket", func() bool {
		a.wmu.Lock()
		defer a.wmu.Unlock()
		return a.flushing && a.written < a.taken
	})
	if err := a.Send(func(m schema.FrameMsg) error { return m.SetGoodbye("last words") }); err != nil {
		t.Fatal(err)
	}
	synced := make(chan error, 1)
	go func() { // closes at once when Sync returns, as the daemon does
		err := a.Sync()
		a.Close()
		synced <- err
	}()
	var last string
	for last == "" {
		msg, m, _, err := b.Recv()
		if err != nil {
			t.Fatalf("the socket ended before the goodbye: %v", err)
		}
		if m.Which() == schema.FrameMsg_Which_goodbye {
			last, _ = m.Goodbye()
		}
		msg.Release()
	}
	if err := <-synced; err != nil {
		t.Fatal(err)
	}
	if last != "last words" {
		t.Fatalf("goodbye %q", last)
	}
	flushed.Wait()
}
