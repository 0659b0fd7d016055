package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// -raw makes testplug a hostile frame peer: it keeps the daemon's frame
// socket for itself (the SDK serves a dummy in its place, so the handshake
// still says "frames") and speaks the protocol directly, breaking it as
// each stream's kind says ("evil/MODE"; -raw MODE for streams of other
// kinds):
//
//	pass          answer every frame with its own descriptor (a control)
//	longer        answer with the frame's descriptor, 4096 bytes longer
//	shorter       answer with the frame's descriptor, one byte shorter
//	parts         answer one frame with 5001 inline parts
//	foreign       answer with a descriptor of another owner's pool
//	oob           answer with bytes past the end of its own pool
//	open          open a stream, as a host would
//	lane          ask for a direct hook lane, as a host would
//	hookstats     report a billion hook calls, as a host would
//	noscope       announce a pool for a scope none of its streams has
//	pipe-pool     announce a pipe as a pool
//	unsealed-pool announce a memfd that is not write-sealed as a pool
func startRaw(mode string) error {
	real, err := unix.Dup(plugin.FramesFD)
	if err != nil {
		return fmt.Errorf("dup the frame socket: %w", err)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socketpair: %w", err)
	}
	if err := unix.Dup3(pair[0], plugin.FramesFD, 0); err != nil {
		return fmt.Errorf("dup3: %w", err)
	}
	unix.Close(pair[0]) // pair[1] stays open: the SDK's dummy never ends
	f := os.NewFile(uintptr(real), "raw-frames")
	conn, err := frames.FileConn(f)
	f.Close()
	if err != nil {
		return err
	}
	go rawServe(conn, mode)
	return nil
}

func rawServe(conn *frames.Conn, defaultMode string) {
	say := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "testplug raw: "+format+"\n", args...) }
	var own *frames.Pool
	modes := map[uint64]string{} // by stream
	lanes := 0                   // direct hook lanes granted
	for {
		msg, fm, fds, err := conn.Recv()
		if err != nil {
			say("frame socket: %v", err)
			return
		}
		switch fm.Which() {
		case schema.FrameMsg_Which_open:
			o, _ := fm.Open()
			kind, _ := o.Kind()
			mode, ok := strings.CutPrefix(kind, "evil/")
			if !ok {
				mode = defaultMode
			}
			modes[o.Stream()] = mode
			say("stream %d (%s) opened in scope %d", o.Stream(), mode, o.Scope())
			switch mode {
			case "open":
				err = conn.Send(func(m schema.FrameMsg) error {
					so, err := m.NewOpen()
					if err != nil {
						return err
					}
					so.SetStream(77)
					return so.SetKind("video/segment")
				})
			case "lane":
				err = conn.Send(func(m schema.FrameMsg) error { return m.SetLaneRequest("evil-lane") })
			case "hookstats":
				err = conn.Send(func(m schema.FrameMsg) error {
					hs, err := m.NewHookStats()
					if err != nil {
						return err
					}
					hs.SetCalls(1e9)
					hs.SetFailures(1e9)
					if err := hs.SetHook("h"); err != nil {
						return err
					}
					return hs.SetPlugin("evil-hookstats")
				})
			case "noscope", "oob":
				scope := o.Scope()
				if mode == "noscope" {
					scope += 1000
				}
				if own, err = frames.NewPool(1, 1<<16); err == nil {
					err = conn.Send(poolAdd(1, 1<<16, scope), own.File())
				}
			case "pipe-pool":
				var p [2]int
				if err = unix.Pipe2(p[:], unix.O_CLOEXEC); err == nil {
					r := os.NewFile(uintptr(p[0]), "pipe")
					err = conn.Send(poolAdd(1, 1<<16, o.Scope()), r)
					r.Close()
				}
			case "unsealed-pool":
				var fd int
				if fd, err = unix.MemfdCreate("evil", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING); err == nil {
					unix.Ftruncate(fd, 1<<16)
					unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW)
					mf := os.NewFile(uintptr(fd), "evil")
					err = conn.Send(poolAdd(1, 1<<16, o.Scope()), mf)
					mf.Close()
				}
			}
		case schema.FrameMsg_Which_lane:
			// A direct hook lane: the first one answers its first call
			// with a frame that is not Cap'n Proto; later ones are
			// closed at once (the host then goes through the daemon).
			if len(fds) == 1 {
				lane := fds[0]
				fds = nil
				lanes++
				if lanes == 1 {
					go garbleLane(lane)
				} else {
					lane.Close()
				}
			}
		case schema.FrameMsg_Which_frame:
			f, _ := fm.Frame()
			err = rawAnswer(conn, modes[f.Stream()], f, own)
		case schema.FrameMsg_Which_end:
			e, _ := fm.End()
			delete(modes, e.Stream())
			err = conn.SendEnd(e.Stream(), "", false)
		}
		if err != nil {
			say("send: %v", err)
		}
		for _, f := range fds {
			f.Close()
		}
		msg.Release()
	}
}

func poolAdd(id uint32, size, scope uint64) func(schema.FrameMsg) error {
	return func(m schema.FrameMsg) error {
		pa, err := m.NewPoolAdd()
		if err != nil {
			return err
		}
		pa.SetId(id)
		pa.SetSize(size)
		pa.SetScope(scope)
		return nil
	}
}

// rawAnswer answers one frame as mode says.
func rawAnswer(conn *frames.Conn, mode string, f schema.Frame, own *frames.Pool) error {
	h := frames.ReadHeader(f)
	var in frames.Ref
	if f.Data().Which() == schema.Frame_data_Which_ref {
		r, _ := f.Data().Ref()
		in = frames.Ref{Owner: r.Owner(), Pool: r.Pool(), Offset: r.Offset(), Length: r.Length()}
	}
	out := in
	switch mode {
	case "longer":
		out.Length += 4096
	case "shorter":
		out.Length--
	case "foreign":
		out = frames.Ref{Owner: in.Owner + 1000, Pool: 1, Offset: 0, Length: 16}
	case "oob":
		if own == nil {
			return fmt.Errorf("no pool")
		}
		out = frames.Ref{Pool: 1, Offset: uint64(own.Size()) - 8, Length: 4096}
	case "parts":
		for i := uint32(0); i < 5001; i++ {
			if err := conn.Buffer(frames.FrameMsg(f.Stream(), h, i, 5001, []byte("x"), nil)); err != nil {
				return err
			}
		}
		return conn.Flush()
	}
	if in.Length == 0 && mode == "pass" {
		b, _ := f.Data().Inline()
		return conn.SendFrame(f.Stream(), h, 0, 1, b, nil)
	}
	return conn.SendFrame(f.Stream(), h, 0, 1, nil, &out)
}

// garbleLane reads the first hook call on a direct lane and answers it
// with a well-framed reply whose body is not a Cap'n Proto message.
func garbleLane(f *os.File) {
	defer f.Close()
	var hdr [12]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return
	}
	n := binary.LittleEndian.Uint32(hdr[:4])
	if _, err := io.CopyN(io.Discard, f, int64(n)-8); err != nil {
		return
	}
	reply := make([]byte, 12+8)
	binary.LittleEndian.PutUint32(reply[:4], 16)
	copy(reply[4:12], hdr[4:12]) // the call's id
	copy(reply[12:], "garbage!")
	f.Write(reply)
	io.Copy(io.Discard, f) // until the host gives up on the lane
}
