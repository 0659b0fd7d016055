package wire

import "sync"

// CallQueue runs calls one after another, in the order they were pushed,
// on a goroutine that exists while the queue is not empty. Observers are
// fed through one (the daemon's per-plugin queues, a host's direct
// observers, the middleware's observations), so that each sees requests in
// the order they were served and never two at once.
//
// The zero CallQueue is ready to use.
type CallQueue struct {
	mu      sync.Mutex
	calls   []func()
	running bool
}

// MaxQueuedCalls bounds the calls waiting in one CallQueue: a burst fits,
// and an observer that is slower than the requests for long loses
// observations (its own only) instead of holding memory without limit.
const MaxQueuedCalls = 4096

// Push queues call, or reports false when MaxQueuedCalls already wait. The
// goroutine that runs the queue counts in wg, which its owner waits on
// before going away; it ends when the queue is empty, so every call must
// end (by its own deadline, say).
func (q *CallQueue) Push(wg *sync.WaitGroup, call func()) bool {
	q.mu.Lock()
	if len(q.calls) >= MaxQueuedCalls {
		q.mu.Unlock()
		return false
	}
	q.calls = append(q.calls, call)
	start := !q.running
	q.running = true
	q.mu.Unlock()
	if start {
		wg.Go(q.run)
	}
	return true
}

func (q *CallQueue) run() {
	for {
		q.mu.Lock()
		if len(q.calls) == 0 {
			q.running = false
			q.calls = nil // let a burst's backing array go
			q.mu.Unlock()
			return
		}
		call := q.calls[0]
		q.calls[0] = nil
		q.calls = q.calls[1:]
		q.mu.Unlock()
		call()
	}
}
