package plugintest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// Owner ids the harness uses, playing the daemon: its own pools, and the
// plugin's.
const (
	harnessOwner = 2
	pluginOwner  = 1
	harnessScope = 1 // every stream of the harness shares one pool scope
)

// framePeer is the harness's side of the plugin's frame socket: it plays
// the daemon, with its own pool for the frames it sends.
type framePeer struct {
	conn  *frames.Conn
	own   *frames.Producer
	maps  *frames.Mappings
	wrote sync.WaitGroup
	quit  chan struct{}

	mu      sync.Mutex
	replies map[uint64]chan schema.FrameMsg // by stream, one answer part at a time
	err     error
}

func newFramePeer(c *frames.Conn) *framePeer {
	fp := &framePeer{conn: c, own: frames.NewProducerAs(c, 64<<20, harnessOwner), maps: frames.NewMappings(),
		replies: map[uint64]chan schema.FrameMsg{}, quit: make(chan struct{})}
	fp.wrote.Add(1)
	go fp.read() // ends when the plugin closes its side
	return fp
}

func (fp *framePeer) close() {
	close(fp.quit)
	fp.conn.Close()
	fp.wrote.Wait()
	fp.own.Close()
	fp.maps.Close()
}

// reply is a plugin's answer part, copied out of its message.
type reply struct {
	dropped bool
	data    []byte
	end     string
	seq     uint64
	part    uint32
	parts   uint32
	ref     *schema.FrameRef
}

func (fp *framePeer) read() {
	defer fp.wrote.Done()
	for {
		msg, fm, fds, err := fp.conn.Recv()
		if err != nil {
			fp.mu.Lock()
			fp.err = err
			for _, ch := range fp.replies {
				close(ch)
			}
			fp.replies = map[uint64]chan schema.FrameMsg{}
			fp.mu.Unlock()
			return
		}
		switch fm.Which() {
		case schema.FrameMsg_Which_poolAdd:
			if pa, err := fm.PoolAdd(); err == nil && len(fds) == 1 {
				// The plugin's own pools: owner 0 in its messages.
				_ = fp.maps.Add(pluginOwner, pa.Id(), fds[0], int64(pa.Size()))
				fds = nil
			}
		case schema.FrameMsg_Which_release:
			if r, err := fm.Release(); err == nil {
				_ = fp.own.Free(r.Pool(), int64(r.Offset()), int64(r.Length()))
			}
		case schema.FrameMsg_Which_frame, schema.FrameMsg_Which_end:
			var sid uint64
			if fm.Which() == schema.FrameMsg_Which_frame {
				f, _ := fm.Frame()
				sid = f.Stream()
			} else {
				e, _ := fm.End()
				sid = e.Stream()
			}
			fp.mu.Lock()
			ch := fp.replies[sid]
			fp.mu.Unlock()
			if ch != nil { // the test reads it; the message stays alive until then
				select {
				case ch <- fm:
					<-ch
				case <-fp.quit:
				}
			}
		}
		for _, f := range fds {
			f.Close()
		}
		msg.Release()
	}
}

// Stream drives one frame stream through the plugin, as the daemon would:
// frames travel in shared memory, the plugin's answers come back in order.
type Stream struct {
	h  *Harness
	id uint64
	ch chan schema.FrameMsg
}

var streamIDs struct {
	sync.Mutex
	next uint64
}

// OpenStream opens a stream of kind to the plugin's FrameFilter (role
// "transform") or FrameObserver (role "observe").
func (h *Harness) OpenStream(kind, role string, meta plugin.StreamMeta) *Stream {
	h.t.Helper()
	if h.frames == nil {
		h.t.Fatal("plugintest: the harness has no frame socket")
	}
	streamIDs.Lock()
	streamIDs.next++
	id := streamIDs.next
	streamIDs.Unlock()
	st := &Stream{h: h, id: id, ch: make(chan schema.FrameMsg)}
	h.frames.mu.Lock()
	h.frames.replies[id] = st.ch
	h.frames.mu.Unlock()
	err := h.frames.conn.Send(func(m schema.FrameMsg) error {
		o, err := m.NewOpen()
		if err != nil {
			return err
		}
		o.SetStream(id)
		if err := o.SetKind(kind); err != nil {
			return err
		}
		if err := o.SetRole(role); err != nil {
			return err
		}
		o.SetScope(harnessScope)
		if err := o.SetStage("test"); err != nil {
			return err
		}
		sm, err := o.NewMeta()
		if err != nil {
			return err
		}
		sm.SetMediaId(meta.MediaID)
		sm.SetTimescale(meta.Timescale)
		if err := sm.SetTrack(meta.Track); err != nil {
			return err
		}
		return sm.SetCodec(meta.Codec)
	})
	if err != nil {
		h.t.Fatalf("plugintest: open stream: %v", err)
	}
	return st
}

// Filter sends one frame through a transform and returns the frames it
// answered with (none when it dropped the frame), copied.
func (st *Stream) Filter(f *plugin.Frame) ([]*plugin.Frame, error) {
	fp := st.h.frames
	ctx, cancel := context.WithTimeout(context.Background(), st.h.Deadline)
	defer cancel()
	slot, err := fp.own.Alloc(ctx, harnessScope, int64(len(f.Data)))
	if err != nil {
		return nil, err
	}
	copy(slot.Data, f.Data)
	h := frames.Header{Seq: f.Seq, PTS: f.PTS, DTS: f.DTS, Duration: f.Duration, KeyFrame: f.KeyFrame, ContentType: f.ContentType}
	if len(f.Data) == 0 {
		err = fp.conn.SendFrame(st.id, h, 0, 1, nil, nil)
	} else {
		err = fp.conn.SendFrame(st.id, h, 0, 1, nil, &frames.Ref{Owner: harnessOwner, Pool: slot.Pool, Offset: uint64(slot.Off), Length: uint64(slot.Len)})
	}
	if err != nil {
		return nil, err
	}
	var out []*plugin.Frame
	for {
		fm, err := st.next(fmt.Sprintf("no answer for frame %d", f.Seq))
		if err != nil {
			return nil, err
		}
		done, res, err := st.answer(fm, slot, f)
		st.ch <- fm // let the reader release the message
		if err != nil {
			return nil, err
		}
		if res != nil {
			out = append(out, res)
		}
		if done {
			return out, nil
		}
	}
}

// next waits for the plugin's next message on the stream; the caller
// hands it back on st.ch when done with it.
func (st *Stream) next(timeout string) (schema.FrameMsg, error) {
	select {
	case fm, ok := <-st.ch:
		if !ok {
			return fm, fmt.Errorf("plugintest: the plugin closed its frame socket")
		}
		return fm, nil
	case <-time.After(st.h.Deadline):
		return schema.FrameMsg{}, fmt.Errorf("plugintest: %s within %s", timeout, st.h.Deadline)
	}
}

// answer reads one answer part; done reports the last part.
func (st *Stream) answer(fm schema.FrameMsg, in frames.Slot, sent *plugin.Frame) (done bool, out *plugin.Frame, err error) {
	fp := st.h.frames
	if fm.Which() == schema.FrameMsg_Which_end {
		e, _ := fm.End()
		why, _ := e.Error()
		if in.Len > 0 {
			_ = fp.own.Free(in.Pool, in.Off, in.Len)
		}
		return true, nil, fmt.Errorf("the plugin ended the stream: %s", why)
	}
	f, err := fm.Frame()
	if err != nil {
		return true, nil, err
	}
	last := f.Parts() <= 1 || f.Part()+1 >= f.Parts()
	if last && in.Len > 0 {
		defer func() { _ = fp.own.Free(in.Pool, in.Off, in.Len) }() // the answer ends the plugin's hold
	}
	if f.Dropped() {
		return true, nil, nil
	}
	h := frames.ReadHeader(f)
	out = &plugin.Frame{Seq: h.Seq, PTS: h.PTS, DTS: h.DTS, Duration: h.Duration, KeyFrame: h.KeyFrame, ContentType: h.ContentType}
	switch f.Data().Which() {
	case schema.Frame_data_Which_inline:
		b, _ := f.Data().Inline()
		out.Data = append([]byte{}, b...)
	case schema.Frame_data_Which_ref:
		r, _ := f.Data().Ref()
		var b []byte
		switch r.Owner() {
		case harnessOwner: // one of ours, passed back
			b, err = fp.own.View(r.Pool(), r.Offset(), r.Length())
		case 0: // the plugin's own memory: tell it when done
			b, err = fp.maps.Bytes(pluginOwner, r.Pool(), int64(r.Offset()), int64(r.Length()))
			if err == nil {
				defer func() { _ = fp.conn.SendRelease(0, r.Pool(), r.Offset(), r.Length()) }()
			}
		default:
			err = fmt.Errorf("plugintest: the plugin answered with memory of owner %d, which it never got", r.Owner())
		}
		if err != nil {
			return true, nil, err
		}
		out.Data = append([]byte{}, b...)
	}
	return last, out, nil
}

// Close ends the stream as the daemon does when it ran its course, and
// waits until the plugin is done with it (after its StreamCloser, if any).
func (st *Stream) Close() error { return st.end(false) }

// Cancel cancels the stream as the daemon does when the host gives up, and
// waits until the plugin is done with it.
func (st *Stream) Cancel() error { return st.end(true) }

func (st *Stream) end(cancel bool) error {
	fp := st.h.frames
	if err := fp.conn.SendEnd(st.id, "", cancel); err != nil {
		return err
	}
	for {
		fm, err := st.next("the plugin did not finish the stream")
		if err != nil {
			return err
		}
		isEnd := fm.Which() == schema.FrameMsg_Which_end
		st.ch <- fm // let the reader release the message
		if isEnd {
			return nil
		}
	}
}

// Observe sends one frame to an observer and waits until it has seen it.
func (st *Stream) Observe(f *plugin.Frame) error {
	fp := st.h.frames
	ctx, cancel := context.WithTimeout(context.Background(), st.h.Deadline)
	defer cancel()
	before := fp.own.InUse()
	slot, err := fp.own.Alloc(ctx, harnessScope, int64(len(f.Data)))
	if err != nil {
		return err
	}
	copy(slot.Data, f.Data)
	h := frames.Header{Seq: f.Seq, Duration: f.Duration, KeyFrame: f.KeyFrame, ContentType: f.ContentType}
	if err := fp.conn.SendFrame(st.id, h, 0, 1, nil, &frames.Ref{Owner: harnessOwner, Pool: slot.Pool, Offset: uint64(slot.Off), Length: uint64(slot.Len)}); err != nil {
		return err
	}
	// An observer releases the frame when it is done with it.
	for fp.own.InUse() > before {
		if ctx.Err() != nil {
			return fmt.Errorf("plugintest: the observer did not release frame %d within %s", f.Seq, st.h.Deadline)
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}
