package daemon

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// The frame hub routes frame streams (schema/stream.capnp). It never maps a
// pool or touches frame bytes: it forwards descriptors, counts the holders
// of each one and tells the owner when the last holder let go.
//
// Concurrency: one goroutine per peer connection reads messages and calls
// into the hub, whose state is guarded by hub.mu. Under the lock the hub
// only queues outgoing messages (in the order it decided them); one writer
// goroutine per peer drains its queue into batched packets, so a full
// socket to one plugin never stalls the hub. Both goroutines end with the
// peer's connection.
//
// Trust: every peer is hostile until checked (docs/protocol.md, "Frame
// memory"). A pool is accepted only as a sealed memfd of its announced size
// (frames.CheckPool on the received descriptor; nothing is ever reopened or
// mapped here), it belongs to the scope its producer named — a host and one
// exact chain — and only frames of streams of that scope may name it. A
// host names only its own pools; a stage answers a frame with that frame's
// own descriptor or one of its own pools, in order, in at most maxParts
// parts. A plugin that breaks the protocol is cut off (its stages fail by
// their policies, its instance restarts); a host that does is refused that
// stream, or cut off when the message is not about one stream.
//
// Holds: a frame at a transform stage is held until the stage answers it,
// even after its stream ended (the plugin may still be writing into it);
// a frame given to an observer or a host is held until it releases it. A
// frame going back to its owner as the last hold is marked returned and
// counted no more.

// refKey identifies a frame descriptor globally.
type refKey struct {
	owner  uint64
	pool   uint32
	offset uint64
}

type poolKey struct {
	owner uint64
	pool  uint32
}

// framePeer is a host or a plugin instance connected to the hub.
type framePeer struct {
	id   uint64
	name string // "host" or `plugin "x"`
	conn *frames.Conn
	unit *unit // nil for hosts

	pools map[uint32]ownedPool // pools this peer produced; the hub keeps their fds
	has   map[poolKey]bool     // pools of others already sent to this peer
	held  map[refKey]int       // refs this peer holds as host consumer or observer
	heldN int                  // the sum of held
	gone  bool
	// goneCh is closed once the peer is gone; why says why, when it
	// broke the protocol.
	goneCh chan struct{}
	why    string
	lanes  map[string]bool // a host's: plugins it was granted a direct lane to
	// laneGrants counts a host's grants per plugin instance, capped at
	// maxLaneGrants: each is a socket in the plugin.
	laneGrants map[laneGrantKey]int
	// rebound is closed when the plugin answers a rebind (see
	// expectRebound); under the hub's lock.
	rebound chan struct{}
	nOpen   int // a host's open streams; a plugin's live stages
	// A host's uid, counted in frameHub.hostsByUID while reserved.
	uid      uint32
	reserved bool
	// fedLast is the stream the host's last message fed a frame into
	// (reader goroutine, under the hub's lock).
	fedLast *stream

	// Outgoing packets go through a queue drained by the peer's writer
	// goroutine, so the hub never blocks on a socket while holding its
	// lock (a full socket to one plugin must not stall every stream).
	outMu    sync.Mutex
	outQ     []outMsg
	outBytes int64    // about what outQ holds: inline bytes plus a little per message
	outSpare []outMsg // the writer's: outQ and outSpare swap on every drain
	// overflowed is set when the queue passed maxOutQueue: the peer does
	// not read its socket, and was cut off (gone names why).
	overflowed atomic.Bool
	outWake    chan struct{} // capacity 1
	outStop    chan struct{} // closed when the peer is gone
}

// outMsg is one queued message: a frame (the common case, kept free of
// allocations) or any other message built by fill. It owns its files,
// closed once sent.
type outMsg struct {
	fill  func(schema.FrameMsg) error
	files []*os.File

	frame    bool // a frame of stream sid: the fields below
	sid      uint64
	fd       frameData
	ref      frames.Ref
	hasRef   bool
	returned bool
}

func (m *outMsg) writeFrame(fm schema.FrameMsg) error {
	f, err := fm.NewFrame()
	if err != nil {
		return err
	}
	f.SetReturned(m.returned)
	f.SetDropped(m.fd.dropped)
	var ref *frames.Ref
	if m.hasRef {
		ref = &m.ref
	}
	return frames.WriteFrame(f, m.sid, m.fd.Header, m.fd.part, m.fd.parts, m.fd.inline, ref)
}

// send queues a message for the peer; it never blocks. files are the
// message's own and are closed after sending (or dropping) it.
func (p *framePeer) send(fill func(schema.FrameMsg) error, files ...*os.File) error {
	return p.enqueue(outMsg{fill: fill, files: files})
}

// sendFrame queues a frame for the peer (see send).
func (p *framePeer) sendFrame(sid uint64, fd frameData, ref *frames.Ref, returned bool) error {
	m := outMsg{frame: true, sid: sid, fd: fd, returned: returned}
	if ref != nil {
		m.ref, m.hasRef = *ref, true
	}
	return p.enqueue(m)
}

// maxOutQueue bounds, in bytes (inline frame data plus outMsgOverhead per
// message), what waits for one host's writer. A host that stops reading
// its socket while it writes would otherwise make the daemon hold every
// answer to it: past the bound it is cut off instead. (What waits for a
// plugin is bounded by its stages' backlogs: the daemon stops reading the
// hosts that feed them.)
const (
	maxOutQueue    = 64 << 20
	outMsgOverhead = 128
)

func (p *framePeer) enqueue(m outMsg) error {
	size := int64(len(m.fd.inline)) + outMsgOverhead
	p.outMu.Lock()
	select {
	case <-p.outStop:
		p.outMu.Unlock()
		closeAll(m.files)
		return errors.New("frame peer gone")
	default:
	}
	if p.unit == nil && p.outBytes+size > maxOutQueue {
		p.outMu.Unlock()
		closeAll(m.files)
		if !p.overflowed.Swap(true) {
			p.conn.Close() // the reader ends, and gone says why
		}
		return errors.New("frame peer does not read its socket")
	}
	p.outQ = append(p.outQ, m)
	p.outBytes += size
	p.outMu.Unlock()
	select {
	case p.outWake <- struct{}{}:
	default:
	}
	return nil
}

// write drains the queue until the peer is gone; a send error ends the
// connection, and the reader cleans up.
func (p *framePeer) write() {
	for {
		p.outMu.Lock()
		q := p.outQ
		p.outQ = p.outSpare[:0]
		p.outBytes = 0
		p.outMu.Unlock()
		for i := range q {
			// Everything queued goes out in as few packets as fit
			// (frames.BatchMax each); a packet with files goes alone.
			m := &q[i]
			var err error
			switch {
			case len(m.files) > 0:
				err = p.conn.Send(m.fill, m.files...)
			case m.frame:
				err = p.conn.Buffer(m.writeFrame)
			default:
				err = p.conn.Buffer(m.fill)
			}
			if i == len(q)-1 && err == nil {
				err = p.conn.Flush()
			}
			closeAll(m.files)
			if err != nil {
				for _, rest := range q[i+1:] {
					closeAll(rest.files)
				}
				p.conn.Close()
				p.drain()
				return
			}
		}
		clear(q) // let go of what the messages referenced
		p.outSpare = q[:0]
		select {
		case <-p.outWake:
		case <-p.outStop:
			p.drain()
			return
		}
	}
}

// drain drops what is still queued.
func (p *framePeer) drain() {
	p.outMu.Lock()
	q := p.outQ
	p.outQ = nil
	p.outMu.Unlock()
	for _, m := range q {
		closeAll(m.files)
	}
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		return nil, err
	}
	syscall.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), f.Name()), nil
}

type ownedPool struct {
	f     *os.File
	size  uint64
	scope uint64
	// dropping: the owner dropped the pool while frames in it were still
	// held; consumers are told once the last hold ends.
	dropping bool
}

// stream is one host stream and its chain.
type stream struct {
	host      *framePeer
	id        uint64 // the host's stream id
	scope     uint64 // its pools' scope (see schema StreamOpened.scope)
	kind      string
	stages    []*stage // transforms, in order
	observers []*stage
	inputEnd  bool
	ended     bool
	cancelled bool // by its host (or the host went away): stages hear a cancel
}

// stage is one plugin's part in a stream.
type stage struct {
	s      *stream
	index  int
	peer   *framePeer
	sid    uint64 // the stream's id on the plugin's connection
	spec   manifest.Stream
	plugin string
	fifo   []inflight  // frames sent and not yet answered, in order
	timer  *time.Timer // set while armed for the head's deadline
	late   []inflight  // frames passed on after a missed deadline, answer still due; each keeps its hold
	stats  *stageCounters
	dead   bool // bypassed (fail-open after a crash)
	// The answer in progress to the oldest frame: parts seen, parts
	// announced, inline bytes so far.
	part, parts uint32
	inlineN     int
}

type inflight struct {
	seq   uint64
	frame frameData
	due   time.Time // the deadline; zero: none
	sent  time.Time // when it was handed to the stage, for the frame latency
}

// frameData is a frame in transit, copied out of its message.
type frameData struct {
	frames.Header
	part, parts uint32
	inline      []byte
	ref         refKey
	shared      bool // ref names the bytes (else inline)
	length      uint64
	dropped     bool // a stage's answer: nothing passes on
}

type frameHub struct {
	d *Daemon

	mu      sync.Mutex
	drained *sync.Cond // signalled when a stage's backlog shrinks
	nextID  uint64
	refs    map[refKey]int
	// poolHolds is the sum of refs per pool: a dropped pool is forgotten
	// by its consumers only once nothing in it is held.
	poolHolds map[poolKey]int
	// scopes number each (host, exact chain) pair; members are the peers
	// whose pools may serve a scope.
	scopes    map[string]uint64
	members   map[uint64]map[uint64]bool
	scopeHost map[uint64]uint64 // each scope's host
	// hostsByUID counts the hosts' frame sockets per peer uid (capped).
	hostsByUID map[uint32]int
	nextScope  uint64
	peers      map[uint64]*framePeer
	streams    map[[2]uint64]*stream // (host peer id, host stream id)
	stages     map[[2]uint64]*stage  // (plugin peer id, sid)
	nextSID    uint64
}

func newFrameHub(d *Daemon) *frameHub {
	h := &frameHub{d: d, refs: map[refKey]int{}, poolHolds: map[poolKey]int{}, peers: map[uint64]*framePeer{},
		streams: map[[2]uint64]*stream{}, stages: map[[2]uint64]*stage{},
		scopes: map[string]uint64{}, members: map[uint64]map[uint64]bool{}, scopeHost: map[uint64]uint64{},
		hostsByUID: map[uint32]int{}}
	h.drained = sync.NewCond(&h.mu)
	return h
}

// maxBacklog bounds the frames of one stream waiting at a stage. A host
// that runs further ahead stops being read — its socket fills and its Send
// waits — so inline frames, which no pool bounds, cannot pile up in the
// daemon.
const maxBacklog = 1024

// Limits on what one peer may ask of the hub (docs/protocol.md, "Frame
// memory"). Breaking one cuts the peer off or refuses the stream.
const (
	// maxPoolsPerPeer bounds the pools a peer has announced and not
	// dropped: one shared pool per scope plus a few dedicated ones is
	// what the SDKs use.
	maxPoolsPerPeer = 256
	// maxStreamsPerHost bounds a host's open streams.
	maxStreamsPerHost = 256
	// maxStagesPerPlugin bounds the streams one plugin instance takes
	// part in at once; beyond, it is skipped (or, fail-closed, the
	// stream is refused).
	maxStagesPerPlugin = 1024
	// maxParts bounds the frames a transform answers one frame with.
	maxParts = 16
	// maxInline bounds the bytes of a frame sent inline, and of all the
	// inline parts of one answer (schema: maxInlineBytes).
	maxInline = int(schema.MaxInlineBytes)
)

// backloggedLocked reports whether one of the stream's stages has a full
// backlog.
func (s *stream) backloggedLocked() bool {
	if s.ended {
		return false
	}
	for _, st := range s.stages {
		if len(st.fifo) >= maxBacklog {
			return true
		}
	}
	return false
}

// reserveHost counts a new frame socket for uid, unless it has max open.
func (h *frameHub) reserveHost(uid uint32, max int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if max > 0 && h.hostsByUID[uid] >= max {
		return false
	}
	h.hostsByUID[uid]++
	return true
}

// unreserveHost undoes reserveHost.
func (h *frameHub) unreserveHost(uid uint32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.unreserveHostLocked(uid)
}

func (h *frameHub) unreserveHostLocked(uid uint32) {
	if h.hostsByUID[uid]--; h.hostsByUID[uid] <= 0 {
		delete(h.hostsByUID, uid)
	}
}

// attach starts serving a peer's frame socket. The reading goroutine is
// owned by the hub and ends when the connection does.
func (h *frameHub) attach(conn *frames.Conn, name string, u *unit) *framePeer {
	return h.attachPeer(conn, name, u, 0, false)
}

// attachHost starts serving a host's frame socket, counted for uid (see
// reserveHost) until it is gone.
func (h *frameHub) attachHost(conn *frames.Conn, uid uint32) *framePeer {
	return h.attachPeer(conn, "host", nil, uid, true)
}

func (h *frameHub) attachPeer(conn *frames.Conn, name string, u *unit, uid uint32, reserved bool) *framePeer {
	h.mu.Lock()
	h.nextID++
	p := &framePeer{id: h.nextID, name: name, conn: conn, unit: u, uid: uid, reserved: reserved,
		pools: map[uint32]ownedPool{}, has: map[poolKey]bool{}, held: map[refKey]int{},
		goneCh: make(chan struct{}), lanes: map[string]bool{},
		outWake: make(chan struct{}, 1), outStop: make(chan struct{})}
	h.peers[p.id] = p
	h.mu.Unlock()
	h.d.wg.Add(2)
	go func() { // the peer's reader; ends when the connection does
		defer h.d.wg.Done()
		h.read(p)
	}()
	go func() { // the peer's writer; ends when the peer is gone
		defer h.d.wg.Done()
		p.write()
	}()
	return p
}

func (h *frameHub) read(p *framePeer) {
	var err error
	for {
		msg, fm, fds, rerr := p.conn.Recv()
		if rerr != nil {
			err = rerr
			break
		}
		h.mu.Lock()
		herr := h.handleLocked(p, fm, fds)
		// A host whose last frame filled a stage's backlog is not read
		// until the stage catches up (only a frame can fill one).
		for s := p.fedLast; s != nil && !p.gone && s.backloggedLocked(); {
			h.drained.Wait()
		}
		p.fedLast = nil
		h.mu.Unlock()
		msg.Release()
		if herr != nil {
			err = herr
			p.goodbye(herr.Error())
			break
		}
	}
	h.gone(p, err)
}

// goodbye tells the peer, last, why the daemon closes its frame socket (it
// broke the protocol), giving a peer that does not read a moment at most.
func (p *framePeer) goodbye(why string) {
	_ = p.conn.SetWriteDeadline(time.Now().Add(time.Second))
	if p.conn.Send(func(m schema.FrameMsg) error { return m.SetGoodbye(why) }) == nil {
		_ = p.conn.Sync() // the writer may hold it in its batch: out before the close
	}
}

// handleLocked applies one message from p.
func (h *frameHub) handleLocked(p *framePeer, fm schema.FrameMsg, fds []*os.File) error {
	switch fm.Which() {
	case schema.FrameMsg_Which_poolAdd:
		pa, err := fm.PoolAdd()
		if err != nil || len(fds) != 1 {
			closeAll(fds)
			return fmt.Errorf("sent a pool with %d file descriptors (want its memfd alone)", len(fds))
		}
		if err := h.addPoolLocked(p, pa, fds[0]); err != nil {
			fds[0].Close()
			return err
		}
		return nil
	case schema.FrameMsg_Which_poolDrop:
		ref, err := fm.PoolDrop()
		if err != nil {
			return err
		}
		h.dropPoolLocked(p, ref.Pool())
	case schema.FrameMsg_Which_open:
		if p.unit != nil {
			closeAll(fds)
			return errors.New("opened a stream: only hosts open streams")
		}
		so, err := fm.Open()
		if err != nil {
			return err
		}
		h.openLocked(p, so)
	case schema.FrameMsg_Which_frame:
		f, err := fm.Frame()
		if err != nil {
			return err
		}
		fd, err := readFrameData(f, p)
		if err != nil {
			closeAll(fds)
			return err
		}
		if p.unit == nil {
			h.hostFrameLocked(p, f.Stream(), fd)
		} else {
			h.stageFrameLocked(p, f.Stream(), fd)
		}
	case schema.FrameMsg_Which_release:
		r, err := fm.Release()
		if err != nil {
			return err
		}
		key := refKey{owner: r.Owner(), pool: r.Pool(), offset: r.Offset()}
		if key.owner == 0 {
			key.owner = p.id
		}
		if p.held[key] > 0 {
			p.held[key]--
			p.heldN--
			if p.held[key] == 0 {
				delete(p.held, key)
			}
			h.unrefLocked(key, r.Length())
		}
	case schema.FrameMsg_Which_laneRequest:
		if p.unit != nil {
			closeAll(fds)
			return errors.New("asked for a direct hook lane: only hosts do")
		}
		name, err := fm.LaneRequest()
		if err != nil {
			return err
		}
		h.grantLaneLocked(p, name)
	case schema.FrameMsg_Which_hookStats:
		if p.unit != nil {
			closeAll(fds)
			return errors.New("reported hook calls: only hosts do")
		}
		hs, err := fm.HookStats()
		if err != nil {
			return err
		}
		plugin, _ := hs.Plugin()
		hook, _ := hs.Hook()
		// Only calls on a lane this host was granted count, and only for
		// a hook the plugin has.
		if u, err := h.d.unit(plugin); err == nil && p.lanes[plugin] && u.hasHook(hook) {
			u.breaker(hook).Add(hs.Calls(), hs.Failures())
			u.addDirectStats(hook, hs)
		}
	case schema.FrameMsg_Which_rebound:
		if p.unit == nil {
			closeAll(fds)
			return errors.New("answered a rebind: only plugins do")
		}
		if p.rebound != nil {
			close(p.rebound)
			p.rebound = nil
		}
	case schema.FrameMsg_Which_end:
		e, err := fm.End()
		if err != nil {
			return err
		}
		msg, _ := e.Error()
		if p.unit == nil {
			h.hostEndLocked(p, e.Stream(), e.Cancel())
		} else {
			h.stageEndLocked(p, e.Stream(), msg)
		}
	}
	closeAll(fds)
	return nil
}

func closeAll(fds []*os.File) {
	for _, f := range fds {
		f.Close()
	}
}

func readFrameData(f schema.Frame, p *framePeer) (frameData, error) {
	fd := frameData{Header: frames.ReadHeader(f), part: f.Part(), parts: f.Parts(), dropped: f.Dropped()}
	if fd.dropped {
		return fd, nil
	}
	switch f.Data().Which() {
	case schema.Frame_data_Which_inline:
		b, err := f.Data().Inline()
		if err != nil {
			return fd, err
		}
		if len(b) > maxInline {
			return fd, fmt.Errorf("sent frame %d with %d bytes inline (at most %d; larger frames travel in shared memory)", fd.Seq, len(b), maxInline)
		}
		fd.inline = append([]byte{}, b...)
	case schema.Frame_data_Which_ref:
		r, err := f.Data().Ref()
		if err != nil {
			return fd, err
		}
		if r.Length() == 0 { // an empty frame shares nothing
			return fd, nil
		}
		k := refKey{owner: r.Owner(), pool: r.Pool(), offset: r.Offset()}
		if k.owner == 0 {
			k.owner = p.id
		}
		fd.ref, fd.shared, fd.length = k, true, r.Length()
	}
	return fd, nil
}

// openLocked builds the chain for a new host stream.
func (h *frameHub) openLocked(host *framePeer, so schema.StreamOpen) {
	kind, _ := so.Kind()
	// Packets are built later, by the peers' writers: keep a copy of the
	// metadata that outlives the host's message.
	meta, err := detachMeta(so)
	if err != nil {
		h.sendEndLocked(host, so.Stream(), "unreadable stream metadata: "+err.Error(), false)
		return
	}
	if _, dup := h.streams[[2]uint64{host.id, so.Stream()}]; dup {
		h.sendEndLocked(host, so.Stream(), fmt.Sprintf("stream %d is already open on this connection", so.Stream()), false)
		return
	}
	if host.nOpen >= maxStreamsPerHost {
		h.sendEndLocked(host, so.Stream(), fmt.Sprintf("too many open streams: a host may have %d at once", maxStreamsPerHost), false)
		return
	}
	s := &stream{host: host, id: so.Stream(), kind: kind}
	type cand struct {
		u    *unit
		spec manifest.Stream
	}
	var cands []cand
	for _, u := range h.d.sortedUnits() {
		u.mu.Lock()
		active := u.rec.Enabled && !u.removed
		specs := u.rec.Manifest.Streams
		u.mu.Unlock()
		if !active {
			continue
		}
		for _, sp := range specs {
			if kindMatches(sp.Kind, kind) {
				cands = append(cands, cand{u, sp})
			}
		}
	}
	sort.SliceStable(cands, func(i, j int) bool {
		if cands[i].spec.Priority != cands[j].spec.Priority {
			return cands[i].spec.Priority < cands[j].spec.Priority
		}
		return cands[i].u.name < cands[j].u.name
	})
	var names, roles []string
	for _, c := range cands {
		peer := c.u.framePeer()
		why := "the plugin is not running"
		if peer != nil && !peer.gone && peer.nOpen >= maxStagesPerPlugin {
			why = fmt.Sprintf("the plugin is already in %d streams", maxStagesPerPlugin)
		} else if peer != nil && !peer.gone {
			why = ""
		}
		if why != "" {
			if c.spec.Failure == manifest.FailClosed && c.spec.Role == manifest.RoleTransform {
				h.sendEndLocked(host, s.id, fmt.Sprintf("plugin %q (stream stage %q): %s", c.u.name, c.spec.Name, why), false)
				return
			}
			c.u.logf("stream stage %q skipped for a %s stream: %s", c.spec.Name, kind, why)
			continue
		}
		h.nextSID++
		st := &stage{s: s, peer: peer, sid: h.nextSID, spec: c.spec, plugin: c.u.name, stats: c.u.stageStats(c.spec.Name)}
		if c.spec.Role == manifest.RoleObserve {
			s.observers = append(s.observers, st)
		} else {
			st.index = len(s.stages)
			s.stages = append(s.stages, st)
		}
	}
	s.scope = h.scopeLocked(s)
	host.nOpen++
	for _, st := range append(append([]*stage{}, s.stages...), s.observers...) {
		peer := st.peer
		st.stats.streams.Add(1)
		st.stats.open.Add(1)
		h.stages[[2]uint64{peer.id, st.sid}] = st
		peer.nOpen++
		_ = peer.send(func(m schema.FrameMsg) error {
			o, err := m.NewOpen()
			if err != nil {
				return err
			}
			o.SetStream(st.sid)
			o.SetScope(s.scope)
			if err := o.SetKind(kind); err != nil {
				return err
			}
			if err := o.SetMeta(meta); err != nil {
				return err
			}
			if err := o.SetRole(string(st.spec.Role)); err != nil {
				return err
			}
			return o.SetStage(st.spec.Name)
		})
	}
	h.streams[[2]uint64{host.id, s.id}] = s
	for _, st := range append(append([]*stage{}, s.stages...), s.observers...) {
		names = append(names, st.plugin+"/"+st.spec.Name)
		roles = append(roles, string(st.spec.Role))
	}
	_ = host.send(func(m schema.FrameMsg) error {
		o, err := m.NewOpened()
		if err != nil {
			return err
		}
		o.SetStream(s.id)
		o.SetScope(s.scope)
		l, err := o.NewStages(int32(len(names)))
		if err != nil {
			return err
		}
		r, err := o.NewRoles(int32(len(roles)))
		if err != nil {
			return err
		}
		for i := range names {
			if err := l.Set(i, names[i]); err != nil {
				return err
			}
			if err := r.Set(i, roles[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// detachMeta copies a stream's metadata into a message of its own.
func detachMeta(so schema.StreamOpen) (schema.StreamMeta, error) {
	meta, err := so.Meta()
	if err != nil {
		return schema.StreamMeta{}, err
	}
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return schema.StreamMeta{}, err
	}
	holder, err := schema.NewRootStreamOpen(seg)
	if err != nil {
		return schema.StreamMeta{}, err
	}
	if err := holder.SetMeta(meta); err != nil {
		return schema.StreamMeta{}, err
	}
	return holder.Meta()
}

// scopeLocked returns the number of the stream's scope: its host and its
// exact chain (the same plugin instances, stages and roles). Streams of one
// scope may share pools, because the same peers see all their frames.
func (h *frameHub) scopeLocked(s *stream) uint64 {
	var b strings.Builder
	fmt.Fprintf(&b, "%d", s.host.id)
	for _, st := range append(append([]*stage{}, s.stages...), s.observers...) {
		fmt.Fprintf(&b, "|%d/%s/%s", st.peer.id, st.spec.Name, st.spec.Role)
	}
	key := b.String()
	if id, ok := h.scopes[key]; ok {
		return id
	}
	h.nextScope++
	id := h.nextScope
	h.scopes[key] = id
	m := map[uint64]bool{s.host.id: true}
	for _, st := range s.stages {
		m[st.peer.id] = true
	}
	h.members[id] = m
	h.scopeHost[id] = s.host.id
	return id
}

// addPoolLocked takes a pool a peer announced, after checking its memory
// (frames.CheckPool, on the received descriptor) and its scope.
func (h *frameHub) addPoolLocked(p *framePeer, pa schema.PoolAdd, f *os.File) error {
	id, size, scope := pa.Id(), pa.Size(), pa.Scope()
	switch {
	case id == 0:
		return errors.New("announced pool 0 (ids start at 1)")
	case p.pools[id].f != nil:
		return fmt.Errorf("announced pool %d twice", id)
	case len(p.pools) >= maxPoolsPerPeer:
		return fmt.Errorf("announced more than %d pools", maxPoolsPerPeer)
	case !h.members[scope][p.id]:
		return fmt.Errorf("announced pool %d for scope %d, which is not a scope of its streams", id, scope)
	case size > 1<<40:
		return fmt.Errorf("announced pool %d of %d bytes", id, size)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) { cerr = frames.CheckPool(int(fd), int64(size)) }); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("announced pool %d that is not shareable memory: %w", id, cerr)
	}
	p.pools[id] = ownedPool{f: f, size: size, scope: scope}
	return nil
}

// checkOwnRefLocked checks that a descriptor names bytes inside one of p's
// own pools that serves scope.
func (h *frameHub) checkOwnRefLocked(p *framePeer, fd frameData, scope uint64) error {
	k := fd.ref
	if k.owner != p.id {
		return fmt.Errorf("names pool %d of another peer", k.pool)
	}
	op, ok := p.pools[k.pool]
	switch {
	case !ok || op.dropping:
		return fmt.Errorf("names pool %d, which it has not announced", k.pool)
	case op.scope != scope:
		return fmt.Errorf("names pool %d of another scope (%d, the stream's is %d)", k.pool, op.scope, scope)
	case k.offset > op.size || fd.length > op.size-k.offset:
		return fmt.Errorf("names bytes %d+%d outside its %d-byte pool %d", k.offset, fd.length, op.size, k.pool)
	}
	return nil
}

// kindMatches reports whether a manifest's kind ("video/segment",
// "video/*" or "*") covers a stream's kind.
func kindMatches(pattern, kind string) bool {
	if pattern == "*" || pattern == kind {
		return true
	}
	if prefix, ok := strings.CutSuffix(pattern, "/*"); ok {
		return strings.HasPrefix(kind, prefix+"/")
	}
	return false
}

// hostFrameLocked takes a frame from a host into its stream.
func (h *frameHub) hostFrameLocked(host *framePeer, sid uint64, fd frameData) {
	s := h.streams[[2]uint64{host.id, sid}]
	if s == nil || s.ended || s.inputEnd {
		if fd.shared && fd.ref.owner == host.id { // nobody will hold it: give it back
			h.releaseToOwnerLocked(fd.ref, fd.length)
		}
		return
	}
	if fd.shared {
		if err := h.checkOwnRefLocked(host, fd, s.scope); err != nil {
			if fd.ref.owner == host.id {
				h.releaseToOwnerLocked(fd.ref, fd.length)
			}
			h.endStreamLocked(s, fmt.Sprintf("the host's frame %d was refused: it %v", fd.Seq, err))
			return
		}
		h.holdLocked(fd.ref)
	}
	host.fedLast = s
	h.forwardLocked(s, 0, fd)
}

// forwardLocked hands a frame holding one reference to stage index i, or
// out of the chain when i is past the last stage.
func (h *frameHub) forwardLocked(s *stream, i int, fd frameData) {
	for i < len(s.stages) && s.stages[i].dead {
		i++
	}
	if i < len(s.stages) {
		st := s.stages[i]
		e := inflight{seq: fd.Seq, frame: fd, sent: time.Now()}
		if d := st.spec.Deadline.Duration; d > 0 {
			e.due = e.sent.Add(d)
		}
		st.fifo = append(st.fifo, e)
		h.armLocked(st)
		h.sendFrameLocked(st.peer, st.sid, fd, false)
		return
	}
	// Out of the chain: to the host, and a copy to each observer with
	// credit left.
	for _, o := range s.observers {
		if o.dead || o.peer.gone {
			continue
		}
		if fd.shared {
			if o.peer.heldN >= observerCredit {
				o.stats.dropped.Add(1)
				continue
			}
			h.holdLocked(fd.ref)
			o.peer.held[fd.ref]++
			o.peer.heldN++
		}
		o.stats.frames.Add(1)
		o.stats.bytes.Add(fd.size())
		h.sendFrameLocked(o.peer, o.sid, fd, false)
	}
	returned := false
	if fd.shared {
		if fd.ref.owner == s.host.id && h.refs[fd.ref] == 1 {
			// The last reference goes back to the owner: it frees
			// the memory itself, without a Release round trip.
			h.dropHoldLocked(fd.ref)
			returned = true
		} else {
			s.host.held[fd.ref]++ // the chain's reference passes to the host
			s.host.heldN++
		}
	}
	h.sendFrameLocked(s.host, s.id, fd, returned)
	h.maybeFinishLocked(s)
}

// observerCredit bounds the frames an observer plugin may hold: a slow
// observer misses frames rather than slowing the pipeline.
const observerCredit = 8

// sendFrameLocked sends a frame to a peer, first sending any pool it does
// not have yet. returned marks a frame going back to its owner as the last
// reference (see schema.Frame.returned).
func (h *frameHub) sendFrameLocked(p *framePeer, sid uint64, fd frameData, returned bool) {
	if p.gone {
		return
	}
	var ref refKey
	if fd.shared {
		ref = fd.ref
		pk := poolKey{ref.owner, ref.pool}
		if ref.owner != p.id && !p.has[pk] {
			// The pool is known: it was checked when the frame came in,
			// and a pool with frames held in it is not forgotten.
			owner := h.peers[ref.owner]
			if owner == nil {
				return
			}
			op, ok := owner.pools[ref.pool]
			if !ok {
				return
			}
			// Every consumer gets the same sealed memfd: nobody but
			// its producer can write it. The message owns its own
			// descriptor: the pool may be dropped before the writer
			// sends it.
			f, err := dupFile(op.f)
			if err != nil {
				h.d.log.Error("frame hub: dup a pool descriptor", "err", err)
				return
			}
			if err := p.send(func(m schema.FrameMsg) error {
				pa, err := m.NewPoolAdd()
				if err != nil {
					return err
				}
				pa.SetId(ref.pool)
				pa.SetSize(op.size)
				pa.SetOwner(ref.owner)
				return nil
			}, f); err != nil {
				return
			}
			p.has[pk] = true
		}
	}
	var r *frames.Ref
	if fd.shared {
		r = &frames.Ref{Pool: ref.pool, Offset: ref.offset, Length: fd.length}
		if ref.owner != p.id {
			r.Owner = ref.owner
		}
	}
	_ = p.sendFrame(sid, fd, r, returned)
}

// stageFrameLocked takes a stage's answer (one part) for its oldest frame.
func (h *frameHub) stageFrameLocked(p *framePeer, sid uint64, out frameData) {
	st := h.stages[[2]uint64{p.id, sid}]
	if st == nil || st.spec.Role == manifest.RoleObserve {
		h.dropOutputLocked(p, out, nil)
		return
	}
	if st.s.ended {
		h.drainAnswerLocked(st, out)
		return
	}
	if h.lateAnswerLocked(st, out) {
		return
	}
	if st.dead {
		h.dropOutputLocked(p, out, nil)
		return
	}
	if len(st.fifo) == 0 || st.fifo[0].seq != out.Seq {
		h.failStageLocked(st, fmt.Sprintf("answered frame %d out of order", out.Seq))
		h.dropOutputLocked(p, out, nil)
		return
	}
	in := st.fifo[0].frame
	if out.dropped {
		if st.part != 0 {
			h.failStageLocked(st, fmt.Sprintf("dropped frame %d after answering part of it", out.Seq))
			return
		}
		st.stats.answered(st.fifo[0])
		st.stats.dropped.Add(1)
		h.drained.Broadcast()
		st.popLocked()
		if in.shared {
			h.unrefLocked(in.ref, in.length)
		}
		// The host hears of it too: its window counts every frame
		// until something comes back for it.
		h.sendFrameLocked(st.s.host, st.s.id, frameData{Header: frames.Header{Seq: in.Seq}, dropped: true}, false)
		h.maybeEndStageLocked(st)
		return
	}
	if err := h.checkAnswerLocked(st, in, out); err != nil {
		if out.shared && out.ref.owner == p.id {
			h.releaseToOwnerLocked(out.ref, out.length)
		}
		h.failStageLocked(st, fmt.Sprintf("answered frame %d wrongly: it %v", out.Seq, err))
		if st.s.ended {
			// A stage that broke the protocol keeps nothing: what it
			// holds goes back to its owners now.
			h.releaseStageLocked(st)
		}
		return
	}
	st.part++
	last := st.part == st.parts
	if last {
		st.part, st.parts, st.inlineN = 0, 0, 0
	}
	if out.shared {
		h.holdLocked(out.ref) // held by whatever comes next
	}
	if last {
		st.stats.answered(st.fifo[0])
		st.popLocked()
		if in.shared {
			h.unrefLocked(in.ref, in.length) // the stage's hold ends
		}
	}
	h.forwardLocked(st.s, st.index+1, out)
	if last {
		h.drained.Broadcast()
		h.maybeEndStageLocked(st)
	}
}

// checkAnswerLocked checks one part of a stage's answer to its oldest frame
// in: parts come in order, at most maxParts of them and maxInline bytes
// inline in all; a descriptor is either in's own, whole (passed on), or
// names the stage's own pool of the stream's scope.
func (h *frameHub) checkAnswerLocked(st *stage, in, out frameData) error {
	parts := max(out.parts, 1)
	switch {
	case parts > maxParts:
		return fmt.Errorf("split it into %d parts (at most %d)", parts, maxParts)
	case st.part > 0 && parts != st.parts:
		return fmt.Errorf("changed its number of parts from %d to %d", st.parts, parts)
	case out.part != st.part:
		return fmt.Errorf("sent part %d where part %d was due", out.part, st.part)
	case st.inlineN+len(out.inline) > maxInline:
		return fmt.Errorf("answered with more than %d bytes inline", maxInline)
	}
	if out.shared {
		if in.shared && out.ref == in.ref {
			if out.length != in.length {
				return fmt.Errorf("passed it on as %d bytes of its %d (to change a frame, make a new one)", out.length, in.length)
			}
		} else if err := h.checkOwnRefLocked(st.peer, out, st.s.scope); err != nil {
			return err
		}
	}
	st.parts = parts
	st.inlineN += len(out.inline)
	return nil
}

// dropOutputLocked gives back an output nobody will use.
func (h *frameHub) dropOutputLocked(p *framePeer, out frameData, _ *stage) {
	if out.shared && out.ref.owner == p.id {
		h.releaseToOwnerLocked(out.ref, out.length)
	}
}

// popLocked removes the stage's oldest frame (answered or given up on).
func (st *stage) popLocked() {
	st.fifo[0] = inflight{} // drop its references
	st.fifo = st.fifo[1:]
}

// armLocked makes sure a timer will check the stage's oldest frame against
// its deadline. One timer per stage, not per frame: it fires at the head's
// deadline, and if that frame was answered meanwhile, re-arms for the next.
func (h *frameHub) armLocked(st *stage) {
	if st.timer != nil || len(st.fifo) == 0 || st.fifo[0].due.IsZero() || st.dead || st.s.ended {
		return
	}
	st.timer = time.AfterFunc(time.Until(st.fifo[0].due), func() { h.expire(st) })
}

func (st *stage) disarmLocked() {
	if st.timer != nil {
		st.timer.Stop()
		st.timer = nil
	}
}

// expire applies a stage's failure policy to frames that missed their
// deadline, oldest first.
func (h *frameHub) expire(st *stage) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st.timer = nil
	now := time.Now()
	for !st.s.ended && !st.dead && len(st.fifo) > 0 && !st.fifo[0].due.IsZero() && !now.Before(st.fifo[0].due) {
		e := st.fifo[0]
		st.stats.missed.Add(1)
		msg := fmt.Sprintf("plugin %q (stream stage %q) missed its %s deadline on frame %d", st.plugin, st.spec.Name, st.spec.Deadline.Duration, e.seq)
		if st.spec.Failure == manifest.FailClosed {
			h.endStreamLocked(st.s, msg)
			return
		}
		if u := st.peer.unit; u != nil {
			u.logf("%s; passing it through untouched (fail-open)", msg)
		}
		st.popLocked()
		h.drained.Broadcast()
		// The frame passes on, but the plugin may still be using its
		// memory: the stage keeps a hold until its late answer.
		if e.frame.shared {
			h.holdLocked(e.frame.ref)
		}
		st.late = append(st.late, e)
		h.forwardLocked(st.s, st.index+1, e.frame)
		h.maybeEndStageLocked(st)
	}
	h.armLocked(st)
}

// drainAnswerLocked takes a stage's answer after its stream ended: the
// plugin may have been using the frame's memory until now, so only now does
// its hold end. The stage is forgotten once it has answered everything.
func (h *frameHub) drainAnswerLocked(st *stage, out frameData) {
	if h.lateAnswerLocked(st, out) {
		if len(st.fifo) == 0 && len(st.late) == 0 {
			h.releaseStageLocked(st)
		}
		return
	}
	h.dropOutputLocked(st.peer, out, nil)
	if !out.dropped && out.parts > 1 && out.part+1 < out.parts {
		return // more parts to come
	}
	switch {
	case len(st.fifo) > 0 && st.fifo[0].seq == out.Seq:
		e := st.fifo[0]
		st.popLocked()
		if e.frame.shared {
			h.unrefLocked(e.frame.ref, e.frame.length)
		}
	default: // out of order: no telling what it still uses
		h.releaseStageLocked(st)
		return
	}
	if len(st.fifo) == 0 && len(st.late) == 0 {
		h.releaseStageLocked(st)
	}
}

// lateAnswerLocked takes an answer to a frame the stage missed the
// deadline for (answers come in order, so the late ones come first): it is
// dropped, and the last part ends the stage's hold.
func (h *frameHub) lateAnswerLocked(st *stage, out frameData) bool {
	if len(st.late) == 0 {
		return false
	}
	h.dropOutputLocked(st.peer, out, nil)
	if out.dropped || out.parts <= 1 || out.part+1 >= out.parts {
		e := st.late[0]
		st.late[0] = inflight{}
		st.late = st.late[1:]
		if e.frame.shared {
			h.unrefLocked(e.frame.ref, e.frame.length)
		}
	}
	return true
}

// releaseStageLocked ends a stage of an ended stream: its holds are let go
// and its answers are no longer expected.
func (h *frameHub) releaseStageLocked(st *stage) {
	st.disarmLocked()
	for _, e := range append(st.fifo, st.late...) {
		if e.frame.shared {
			h.unrefLocked(e.frame.ref, e.frame.length)
		}
	}
	st.fifo, st.late = nil, nil
	if h.stages[[2]uint64{st.peer.id, st.sid}] == st {
		delete(h.stages, [2]uint64{st.peer.id, st.sid})
		st.peer.nOpen--
	}
}

// failStageLocked handles a stage that broke the protocol or crashed.
func (h *frameHub) failStageLocked(st *stage, why string) {
	if st.s.ended { // draining: nothing to pass on any more
		h.releaseStageLocked(st)
		return
	}
	st.stats.failures.Add(1)
	st.part, st.parts, st.inlineN = 0, 0, 0
	msg := fmt.Sprintf("plugin %q (stream stage %q) %s", st.plugin, st.spec.Name, why)
	if st.spec.Role == manifest.RoleObserve || st.spec.Failure != manifest.FailClosed {
		if u := st.peer.unit; u != nil {
			u.logf("%s; frames now pass it by untouched (fail-open)", msg)
		}
		st.dead = true
		st.disarmLocked()
		if st.peer.gone { // no late answers will come
			for _, e := range st.late {
				if e.frame.shared {
					h.unrefLocked(e.frame.ref, e.frame.length)
				}
			}
			st.late = nil
		}
		defer h.drained.Broadcast()
		// Pop one at a time: the stream must not look finished while
		// frames are still being passed on.
		for len(st.fifo) > 0 {
			e := st.fifo[0]
			st.popLocked()
			h.forwardLocked(st.s, st.index+1, e.frame)
		}
		h.maybeEndStageLocked(st)
		return
	}
	h.endStreamLocked(st.s, msg)
}

// hostEndLocked: the host has no more frames (or cancels).
func (h *frameHub) hostEndLocked(host *framePeer, sid uint64, cancel bool) {
	s := h.streams[[2]uint64{host.id, sid}]
	if s == nil {
		return
	}
	if cancel {
		s.cancelled = true
		h.endStreamLocked(s, "")
		return
	}
	s.inputEnd = true
	h.maybeEndStageChainLocked(s)
}

// stageEndLocked: a plugin ended its part of a stream with an error.
func (h *frameHub) stageEndLocked(p *framePeer, sid uint64, msg string) {
	st := h.stages[[2]uint64{p.id, sid}]
	if st == nil || st.s.ended {
		return
	}
	if msg == "" {
		msg = "ended the stream"
	}
	h.failStageLocked(st, "failed: "+msg)
}

// maybeEndStageLocked propagates the end of input down the chain once a
// stage has answered everything.
func (h *frameHub) maybeEndStageLocked(st *stage) { h.maybeEndStageChainLocked(st.s) }

func (h *frameHub) maybeEndStageChainLocked(s *stream) {
	if !s.inputEnd || s.ended {
		return
	}
	for _, st := range s.stages {
		if len(st.fifo) > 0 {
			return
		}
	}
	h.maybeFinishLocked(s)
}

// maybeFinishLocked ends a stream whose input ended and whose chain is
// empty.
func (h *frameHub) maybeFinishLocked(s *stream) {
	if !s.inputEnd || s.ended {
		return
	}
	for _, st := range s.stages {
		if len(st.fifo) > 0 {
			return
		}
	}
	h.endStreamLocked(s, "")
}

// drainTimeout bounds how long a plugin keeps the frames it held when
// their stream ended, if it does not answer them.
const drainTimeout = 30 * time.Second

// drainExpired lets go of what a stage of an ended stream still holds.
func (h *frameHub) drainExpired(st *stage) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stages[[2]uint64{st.peer.id, st.sid}] != st {
		return // answered meanwhile
	}
	if u := st.peer.unit; u != nil {
		u.logf("stream stage %q did not answer %d frames within %s of their stream's end: their memory goes back to its owner", st.spec.Name, len(st.fifo)+len(st.late), drainTimeout)
	}
	h.releaseStageLocked(st)
}

// endStreamLocked ends a stream: the host is told (with why, if it failed),
// every stage is told, and every hold the chain had is let go.
func (h *frameHub) endStreamLocked(s *stream, why string) {
	if s.ended {
		return
	}
	s.ended = true
	s.host.nOpen--
	h.drained.Broadcast()
	for _, st := range append(append([]*stage{}, s.stages...), s.observers...) {
		st.stats.open.Add(-1)
		st.disarmLocked()
		if !st.peer.gone {
			// Frames still at the stage mean the stream did not run
			// its course (a failure, a cancel, a host gone): the plugin
			// is to stop, not finish them.
			h.sendEndLocked(st.peer, st.sid, "", why != "" || s.cancelled || len(st.fifo)+len(st.late) > 0)
		}
		// A plugin still holding frames keeps them until it answers
		// (it is told to stop, and answers what it has not started
		// with "dropped"): until then, their memory is not given
		// back to be reused under it.
		// Its frames are read-only to it, so this is for its own sake
		// (no frame it still reads changes under it), and bounded: a
		// plugin that does not answer within drainTimeout loses them.
		if st.peer.gone || len(st.fifo)+len(st.late) == 0 {
			h.releaseStageLocked(st)
		} else {
			st := st
			time.AfterFunc(drainTimeout, func() { h.drainExpired(st) })
		}
	}
	h.sendEndLocked(s.host, s.id, why, false)
	delete(h.streams, [2]uint64{s.host.id, s.id})
}

func (h *frameHub) sendEndLocked(p *framePeer, sid uint64, why string, cancel bool) {
	if p.gone {
		return
	}
	_ = p.send(func(m schema.FrameMsg) error {
		e, err := m.NewEnd()
		if err != nil {
			return err
		}
		e.SetStream(sid)
		e.SetCancel(cancel)
		return e.SetError(why)
	})
}

// unrefLocked drops one hold on a descriptor and gives it back to its owner
// when it was the last.
func (h *frameHub) unrefLocked(k refKey, length uint64) {
	if h.dropHoldLocked(k) {
		h.releaseToOwnerLocked(k, length)
	}
}

// holdLocked adds a hold on a descriptor.
func (h *frameHub) holdLocked(k refKey) {
	h.refs[k]++
	h.poolHolds[poolKey{k.owner, k.pool}]++
}

// dropHoldLocked removes a hold and reports whether it was the last on the
// descriptor. A pool its owner dropped while frames in it were held is
// forgotten once the last of them is let go.
func (h *frameHub) dropHoldLocked(k refKey) (last bool) {
	n, ok := h.refs[k]
	if !ok {
		return true
	}
	if n > 1 {
		h.refs[k] = n - 1
	} else {
		delete(h.refs, k)
		last = true
	}
	pk := poolKey{k.owner, k.pool}
	if m := h.poolHolds[pk] - 1; m > 0 {
		h.poolHolds[pk] = m
		return last
	}
	delete(h.poolHolds, pk)
	if owner := h.peers[pk.owner]; owner != nil && owner.pools[pk.pool].dropping {
		h.dropPoolLocked(owner, pk.pool)
	}
	return last
}

func (h *frameHub) releaseToOwnerLocked(k refKey, length uint64) {
	owner := h.peers[k.owner]
	if owner == nil || owner.gone {
		return
	}
	_ = owner.send(func(m schema.FrameMsg) error {
		r, err := m.NewRelease()
		if err != nil {
			return err
		}
		r.SetPool(k.pool)
		r.SetOffset(k.offset)
		r.SetLength(length)
		return nil
	})
}

func (h *frameHub) dropPoolLocked(p *framePeer, id uint32) {
	op, ok := p.pools[id]
	if !ok {
		return
	}
	pk := poolKey{p.id, id}
	if h.poolHolds[pk] > 0 {
		// Frames in it are still held: consumers keep their mappings
		// until the last is let go (unmapping under a held frame would
		// crash its holder).
		op.dropping = true
		p.pools[id] = op
		return
	}
	delete(p.pools, id)
	op.f.Close()
	if p.gone && len(p.pools) == 0 {
		delete(h.peers, p.id)
	}
	for _, q := range h.peers {
		if q.has[pk] && !q.gone {
			delete(q.has, pk)
			_ = q.send(func(m schema.FrameMsg) error {
				r, err := m.NewPoolDrop()
				if err != nil {
					return err
				}
				r.SetOwner(p.id)
				r.SetPool(id)
				return nil
			})
		}
	}
}

// gone cleans up after a peer whose connection ended: its streams end (a
// host) or its stages fail by policy (a plugin), and its holds are let go.
func (h *frameHub) gone(p *framePeer, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p.gone = true
	if p.reserved {
		p.reserved = false
		h.unreserveHostLocked(p.uid)
	}
	if err != nil && p.why == "" && !isConnEnd(err) {
		p.why = err.Error()
	}
	if p.overflowed.Load() && p.why == "" {
		p.why = fmt.Sprintf("did not read its frame socket: more than %s of messages waited for it", manifest.Size(maxOutQueue))
	}
	close(p.goneCh)
	h.drained.Broadcast()
	p.conn.Close()
	p.outMu.Lock()
	close(p.outStop)
	p.outMu.Unlock()
	h.forgetScopesLocked(p)
	if p.unit == nil {
		for k, s := range h.streams {
			if k[0] == p.id {
				s.cancelled = true // the host is gone: its stages stop
				h.endStreamLocked(s, "")
			}
		}
	} else {
		why := "stopped mid-stream"
		if p.why != "" {
			why = "broke the frame protocol and was cut off: it " + p.why
			p.unit.logf("frame socket cut off: the plugin %s", p.why)
		} else {
			p.unit.mu.Lock()
			if p.unit.lastExit != "" {
				why = "stopped mid-stream (" + p.unit.lastExit + ")"
			}
			p.unit.mu.Unlock()
		}
		for k, st := range h.stages {
			if k[0] == p.id {
				h.failStageLocked(st, why)
			}
		}
	}
	for k, n := range p.held {
		for i := 0; i < n; i++ {
			h.unrefLocked(k, 0)
		}
	}
	p.held, p.heldN = nil, 0
	for id := range p.pools {
		h.dropPoolLocked(p, id)
	}
	if len(p.pools) == 0 {
		delete(h.peers, p.id)
	} // else it stays, gone, until the frames held in its pools are let go
	if p.why != "" {
		h.d.log.Warn("frame peer cut off", "peer", p.name, "why", p.why)
	} else if err != nil && !errors.Is(err, os.ErrClosed) {
		h.d.log.Debug("frame peer gone", "peer", p.name, "err", err)
	}
}

// isConnEnd reports whether err is the connection ending rather than the
// peer breaking the protocol.
func isConnEnd(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// forgetScopesLocked forgets the scopes a gone peer was part of: new
// streams get new ones. The scopes of a host that is still there stay
// known to its members until it is gone too (a pool announced for one just
// as a plugin left is not a violation; no stream will take its frames).
func (h *frameHub) forgetScopesLocked(p *framePeer) {
	for key := range h.scopes {
		if scopeHas(key, p.id) {
			delete(h.scopes, key)
		}
	}
	if p.unit == nil {
		for id, m := range h.members {
			if m[p.id] && h.scopeHost[id] == p.id {
				delete(h.members, id)
				delete(h.scopeHost, id)
			}
		}
	}
}

// scopeHas reports whether a scope key names peer id (as the host, or as
// any stage, observers included).
func scopeHas(key string, id uint64) bool {
	for i, part := range strings.Split(key, "|") {
		if i > 0 {
			part, _, _ = strings.Cut(part, "/")
		}
		if part == strconv.FormatUint(id, 10) {
			return true
		}
	}
	return false
}

// closeAll closes every peer connection; their reading goroutines then end.
func (h *frameHub) closeAll() {
	h.mu.Lock()
	peers := make([]*framePeer, 0, len(h.peers))
	for _, p := range h.peers {
		peers = append(peers, p)
	}
	h.mu.Unlock()
	for _, p := range peers {
		p.conn.Close()
	}
}

// closeHosts closes every host's frame socket and waits until the hub has
// ended their streams, so that each stage has been sent its end.
func (h *frameHub) closeHosts() {
	h.mu.Lock()
	var hosts []*framePeer
	for _, p := range h.peers {
		if p.unit == nil {
			hosts = append(hosts, p)
		}
	}
	h.mu.Unlock()
	for _, p := range hosts {
		p.conn.Close()
	}
	for _, p := range hosts {
		<-p.goneCh
	}
}

// expectRebound returns a channel closed when plugin peer p answers the
// rebind about to be sent.
func (h *frameHub) expectRebound(p *framePeer) <-chan struct{} {
	ch := make(chan struct{})
	h.mu.Lock()
	p.rebound = ch
	h.mu.Unlock()
	return ch
}

// maxLaneGrants bounds the direct lanes one frame socket may be granted to
// one plugin instance: a host needs one (a few after lanes broke); each is
// a socket and a goroutine in the plugin, which a host asking in a loop
// must not exhaust.
const maxLaneGrants = 16

// laneGrantKey is a plugin instance a host was granted lanes to.
type laneGrantKey struct{ plugin, instance string }

// grantLaneLocked sets up a direct hook lane between a host and a running
// plugin: a socketpair whose ends go to each over their frame sockets. The
// host then calls the plugin's only hook of a phase itself; everything else
// still goes through the daemon.
func (h *frameHub) grantLaneLocked(hostPeer *framePeer, plugin string) {
	refuse := func(why string) {
		_ = hostPeer.send(func(m schema.FrameMsg) error {
			g, err := m.NewLane()
			if err != nil {
				return err
			}
			if err := g.SetPlugin(plugin); err != nil {
				return err
			}
			return g.SetError(why)
		})
	}
	u, err := h.d.unit(plugin)
	if err != nil {
		refuse(err.Error())
		return
	}
	u.mu.Lock()
	inst, state := u.inst, u.state.name()
	u.mu.Unlock()
	switch {
	case inst == nil:
		refuse(fmt.Sprintf("plugin %q is not running (%s); calls to it go through the daemon", plugin, state))
		return
	case inst.lane == nil:
		refuse(fmt.Sprintf("plugin %q serves no hook lane (its handshake did not set PluginInfo.lane, fd 4); calls to it go through the daemon", plugin))
		return
	case inst.frames == nil:
		refuse(fmt.Sprintf("plugin %q serves no frame socket (its handshake did not set PluginInfo.frames, fd 5), which is how the daemon hands a plugin its direct lanes; calls to it go through the daemon", plugin))
		return
	case inst.frames.gone:
		refuse(fmt.Sprintf("plugin %q closed its frame socket; calls to it go through the daemon", plugin))
		return
	}
	key := laneGrantKey{plugin, inst.id}
	if n := hostPeer.laneGrants[key]; n >= maxLaneGrants {
		refuse(fmt.Sprintf("this frame socket was granted %d direct lanes to plugin %q already (the cap per plugin instance): use them; after the plugin restarts, ask again", n, plugin))
		return
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		refuse("socketpair: " + err.Error())
		return
	}
	if hostPeer.laneGrants == nil {
		hostPeer.laneGrants = map[laneGrantKey]int{}
	}
	hostPeer.laneGrants[key]++ // counted once the plugin holds its end
	pluginEnd, hostEnd := os.NewFile(uintptr(fds[0]), "direct-lane"), os.NewFile(uintptr(fds[1]), "direct-lane")
	grant := func(to *framePeer, f *os.File) error { // the message owns f
		return to.send(func(m schema.FrameMsg) error {
			g, err := m.NewLane()
			if err != nil {
				return err
			}
			if err := g.SetPlugin(plugin); err != nil {
				return err
			}
			return g.SetInstance(inst.id)
		}, f)
	}
	if err := grant(inst.frames, pluginEnd); err != nil {
		hostEnd.Close()
		refuse("could not reach the plugin: " + err.Error())
		return
	}
	if grant(hostPeer, hostEnd) == nil {
		hostPeer.lanes[plugin] = true
	}
}

// hasHook reports whether the plugin's manifest has a hook of that name.
func (u *unit) hasHook(name string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, hk := range u.rec.Manifest.Hooks {
		if hk.Name == name {
			return true
		}
	}
	return false
}

// cutReason says why the hub cut the peer off, or "" if it did not.
func (p *framePeer) cutReason() string {
	select {
	case <-p.goneCh:
		return p.why // written before goneCh closed
	default:
		return ""
	}
}
