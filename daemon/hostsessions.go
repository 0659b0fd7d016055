package daemon

import (
	"crypto/rand"
	"fmt"
	"io"
	"sync"
)

// preambleLen is what the daemon reads first of a connection that does
// not start with Cap'n Proto: enough to tell wire.LanePreamble from
// wire.FramesPreamble, and their versions.
const preambleLen = 8

// sessionToken names a host session to its other connections.
type sessionToken [16]byte

// hostSessions are the host sessions open now, by token. A hook lane or a
// frame socket opened with a token is tied to its session: it is closed
// when the session ends.
type hostSessions struct {
	mu sync.Mutex
	m  map[sessionToken]*hostSession
}

// add gives h a fresh token and records it.
func (t *hostSessions) add(h *hostSession) error {
	if _, err := rand.Read(h.token[:]); err != nil {
		return fmt.Errorf("session token: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[sessionToken]*hostSession{}
	}
	t.m[h.token] = h
	return nil
}

func (t *hostSessions) remove(h *hostSession) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m[h.token] == h {
		delete(t.m, h.token)
	}
}

// lookup finds the session a connection names, refusing a token that is
// not a session's or was given to another uid: why says so, for the host.
func (t *hostSessions) lookup(token []byte, uid uint32) (h *hostSession, why string) {
	var k sessionToken
	if len(token) != len(k) {
		return nil, fmt.Sprintf("the session token must be %d bytes", len(k))
	}
	copy(k[:], token)
	t.mu.Lock()
	h = t.m[k]
	t.mu.Unlock()
	if h == nil || h.uid != uid { // another uid's token is not told apart from none
		return nil, "no open host session has this token: open a session (openHost) on this socket first, and use its sessionToken; a token ends with its session"
	}
	return h, ""
}

// tie records a connection to close when h ends; gone, when not nil, is
// closed once the connection ended by itself, and lets it be forgotten.
// It returns false (and the caller closes c) when h has ended already.
func (h *hostSession) tie(c io.Closer, gone <-chan struct{}) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ended {
		return false
	}
	if h.tied == nil {
		h.tied = map[io.Closer]<-chan struct{}{}
	}
	for old, g := range h.tied { // forget what ended by itself
		if g != nil && isClosed(g) {
			delete(h.tied, old)
		}
	}
	h.tied[c] = gone
	return true
}

func (h *hostSession) untie(c io.Closer) {
	h.mu.Lock()
	delete(h.tied, c)
	h.mu.Unlock()
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
