//go:build linux

package daemon

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// The hostile local clients: processes on the daemon's machine that reach
// its sockets (issue 9, classes 5 and 6). Each test shows the attack fails,
// only the attacker is refused or cut off, and the daemon, its plugins and
// legitimate hosts and operators keep working.

// Test identities: the helper runs as nobody, in the host group or not.
const (
	nobodyUID = 65534
	hostGID   = 4242 // --host-group of the daemons below
)

// hostileClient runs daemon/testdata/hostileclient as uid nobody with the
// given supplementary groups and returns its output.
func hostileClient(t *testing.T, dir string, groups []uint32, args ...string) string {
	t.Helper()
	bin := filepath.Join(dir, "hostileclient")
	if _, err := os.Stat(bin); err != nil {
		copyFile(t, buildBin(t, "./daemon/testdata/hostileclient", true), bin, 0o755)
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyUID, Gid: nobodyUID, Groups: groups}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hostileclient %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// wantLine fails unless out has a line starting with prefix and
// containing every one of subs.
func wantLine(t *testing.T, what, out, prefix string, subs ...string) {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, prefix) {
			continue
		}
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(l, s)
		}
		if ok {
			return
		}
	}
	t.Fatalf("%s: want a line %q containing %q; got:\n%s", what, prefix, subs, out)
}

// startHostileTarget starts a daemon whose host socket belongs to hostGID,
// with a plugin answering GET /api/v1/media/forbidden with 403, and makes
// its socket directory reachable by other uids.
func startHostileTarget(t *testing.T, cfg Config) *testDaemon {
	t.Helper()
	cfg.HostGroup = fmt.Sprint(hostGID)
	td := startDaemonConfig(t, cfg)
	td.install(t, pluginDir(t, testplugManifest("guard", nil, fmt.Sprintf(requestHook, "2s", "fail-open"))))
	waitState(t, td.ctl, "guard", 30*time.Second, "running", running)
	if err := os.Chmod(filepath.Dir(td.socket), 0o755); err != nil {
		t.Fatal(err)
	}
	return td
}

// legitimateStillWorks checks that root's operator session and a root host
// session are served.
func legitimateStillWorks(t *testing.T, td *testDaemon) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := td.ctl.Inspect(ctx, "guard")
	if err != nil || st.State != StateRunning || !st.Enabled {
		t.Fatalf("operator: inspect guard: %+v, %v", st, err)
	}
	s, err := host.Dial(ctx, td.socket)
	if err != nil {
		t.Fatalf("host: %v", err)
	}
	defer s.Close()
	res, err := s.Dispatch(ctx, host.PhaseRequest, &host.Request{Method: "GET", Path: "/api/v1/media/forbidden"}, nil)
	if err != nil || res.Response == nil || res.Response.Status != 403 {
		t.Fatalf("host: dispatch: %+v, %v", res, err)
	}
}

func socketMode(t *testing.T, path string) (os.FileMode, uint32) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Gid
}

// A member of the host group is a host, never an operator: it dispatches
// hooks on the host socket, is refused the control face there, cannot
// reach the control socket (its file mode, and the peer check behind it)
// and so cannot disable or remove plugins.
func TestHostileClientsHostGroupIsNoOperator(t *testing.T) {
	td := startHostileTarget(t, Config{})
	dir := filepath.Dir(td.socket)
	member := []uint32{hostGID}

	if mode, gid := socketMode(t, td.socket); mode != 0o660 || gid != hostGID {
		t.Fatalf("host socket: mode %v group %d, want 0660 group %d", mode, gid, hostGID)
	}
	if mode, gid := socketMode(t, td.control); mode != 0o600 || gid != 0 {
		t.Fatalf("control socket: mode %v group %d, want 0600 root", mode, gid)
	}

	out := hostileClient(t, dir, member, "dispatch", td.socket)
	wantLine(t, "member dispatches", out, "OK", "status 403", "guard/")

	out = hostileClient(t, dir, member, "control", td.socket, "guard")
	wantLine(t, "control face on the host socket", out, "ERR", "permission denied", "host socket", td.control)

	out = hostileClient(t, dir, member, "control", td.control, "guard")
	wantLine(t, "control socket by file mode", out, "ERR", "control socket", "permission denied for uid 65534", "--operator-group")

	// Loosen the file mode: the peer check still refuses.
	if err := os.Chmod(td.control, 0o666); err != nil {
		t.Fatal(err)
	}
	out = hostileClient(t, dir, member, "control", td.control, "guard")
	wantLine(t, "control socket by peer check", out, "ERR", `dimplugd: control socket: permission denied: uid 65534 is not root`, "--operator-group")
	if strings.Contains(out, "OK disabled") || strings.Contains(out, "OK removed") {
		t.Fatalf("a host-group member operated the daemon:\n%s", out)
	}
	legitimateStillWorks(t, td)
}

// A process in no allowed group is refused on both sockets, by their file
// modes and, with the modes loosened, by the peer check; the same process in
// the host group dispatches hooks.
func TestHostileClientsOutsiderRefused(t *testing.T) {
	td := startHostileTarget(t, Config{})
	dir := filepath.Dir(td.socket)

	out := hostileClient(t, dir, nil, "dispatch", td.socket)
	wantLine(t, "outsider, host socket by file mode", out, "ERR", "host socket", "permission denied for uid 65534", "--host-group")
	out = hostileClient(t, dir, nil, "control", td.control, "guard")
	wantLine(t, "outsider, control socket by file mode", out, "ERR", "control socket", "permission denied for uid 65534")

	for _, p := range []string{td.socket, td.control} {
		if err := os.Chmod(p, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	out = hostileClient(t, dir, nil, "dispatch", td.socket)
	wantLine(t, "outsider, host socket by peer check", out, "ERR",
		"dimplugd: host socket: permission denied: uid 65534 is not root", fmt.Sprintf(`not in group "%d"`, hostGID))
	out = hostileClient(t, dir, nil, "control", td.control, "guard")
	wantLine(t, "outsider, control socket by peer check", out, "ERR", "dimplugd: control socket: permission denied: uid 65534")

	out = hostileClient(t, dir, []uint32{hostGID}, "dispatch", td.socket)
	wantLine(t, "member dispatches", out, "OK", "status 403")
	legitimateStillWorks(t, td)
}

// A uid over its connection cap is refused with a reason; other uids and
// the other socket are not affected, and the cap frees up with the
// connections.
func TestHostileClientsConnectionCap(t *testing.T) {
	td := startHostileTarget(t, Config{Limits: Limits{HostConnsPerUID: 6}})
	dir := filepath.Dir(td.socket)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// A root host session holds two connections (RPC and hook lane);
	// four raw connections fill the cap.
	legit := dial(t, td.socket)
	for range 4 {
		c, err := net.Dial("unix", td.socket)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitFor(t, 5*time.Second, "the daemon counts root's 6 host connections", func() bool {
		return td.server.open(0) == 6
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := host.Dial(ctx, td.socket)
	if err == nil || !strings.Contains(err.Error(), "dimplugd: host socket: too many connections: uid 0 already has 6 open") {
		t.Fatalf("7th connection of uid 0: want refused with the cap named, got %v", err)
	}
	// Another uid still connects, and the established session still works.
	out := hostileClient(t, dir, []uint32{hostGID}, "dispatch", td.socket)
	wantLine(t, "another uid", out, "OK", "status 403")
	if res, err := legit.Dispatch(ctx, host.PhaseRequest, &host.Request{Method: "GET", Path: "/api/v1/media/forbidden"}, nil); err != nil || res.Response == nil {
		t.Fatalf("established session: %+v, %v", res, err)
	}
	if _, err := td.ctl.List(ctx); err != nil {
		t.Fatalf("operator: %v", err)
	}
	// Freed connections make room again.
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	waitFor(t, 5*time.Second, "a new root host session once the raw connections closed", func() bool {
		s, err := host.Dial(ctx, td.socket)
		if err == nil {
			s.Close()
		}
		return err == nil
	})
}

// The accept loop survives EMFILE: a daemon limited to 64 descriptors is
// flooded with connections until accept fails; once the flood ends, status
// and host sessions work again without a restart.
func TestHostileClientsAcceptSurvivesEMFILE(t *testing.T) {
	bin := buildBin(t, "./cmd/dimplugd", false)
	dir := shortTempDir(t, "dpm")
	sock, ctlSock := filepath.Join(dir, "d.sock"), filepath.Join(dir, "c.sock")
	log := &syncLog{}
	cmd := exec.Command("/bin/sh", "-c", `ulimit -n 64 && exec "$@"`, "sh", bin, "serve", "--insecure-no-sandbox",
		"--state-dir", filepath.Join(dir, "state"), "--socket", sock, "--control-socket", ctlSock,
		"--max-conns", "100000", "--host-conns-per-uid", "100000")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	status := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c, err := host.DialControl(ctx, ctlSock)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Status(ctx)
		return err
	}
	waitFor(t, 20*time.Second, "the daemon serves its control socket", func() bool { return status(time.Second) == nil })

	var flood []net.Conn
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	for range 300 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			break // the backlog is full
		}
		flood = append(flood, c)
	}
	waitFor(t, 10*time.Second, "the daemon's accept hits EMFILE", func() bool {
		return strings.Contains(log.String(), "too many open files")
	})
	if err := status(500 * time.Millisecond); err == nil {
		t.Log("status answered during the flood (the control socket got a descriptor)")
	}
	for _, c := range flood {
		c.Close()
	}
	flood = nil
	waitFor(t, 15*time.Second, "status works again after the flood", func() bool { return status(2*time.Second) == nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := host.Dial(ctx, sock)
	if err != nil {
		t.Fatalf("host session after the flood: %v\n%s", err, log.String())
	}
	s.Close()
	if !strings.Contains(log.String(), "accept works again") {
		t.Errorf("the daemon did not log its recovery:\n%s", log.String())
	}
}

// Half-sent messages pin no memory: ten clients announce ~60 MiB messages
// (30 MiB on the host socket, whose messages are smaller) and stall after
// a few bytes; the daemon's heap stays put, they are cut off after the
// timeout, and other clients are served meanwhile.
func TestHostileClientsHalfSentMessages(t *testing.T) {
	td := startHostileTarget(t, Config{Limits: Limits{FirstMessageTimeout: 2 * time.Second, MessageTimeout: 2 * time.Second}})
	before := heapInUse()
	var stalled []net.Conn
	defer func() {
		for _, c := range stalled {
			c.Close()
		}
	}()
	for i := range 10 {
		sock, size := td.control, 60<<20
		if i%2 == 1 {
			sock, size = td.socket, 30<<20
		}
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		stalled = append(stalled, c)
		if _, err := c.Write(append(segmentHeader(size), make([]byte, 4096)...)); err != nil {
			t.Fatal(err)
		}
	}
	// One more stalls in its second message, after a complete bootstrap.
	c, err := net.Dial("unix", td.socket)
	if err != nil {
		t.Fatal(err)
	}
	stalled = append(stalled, c)
	if _, err := c.Write(append(bootstrapMessage(t), append(segmentHeader(30<<20), make([]byte, 4096)...)...)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the daemon reads the stalled messages", func() bool {
		return td.server.open(0)+td.ctlSrv.open(0) >= 12 // 11 stalled + root's control session
	})
	grown := int64(heapInUse()) - int64(before)
	t.Logf("heap in use grew by %.1f MiB with 11 half-sent messages announcing 450 MiB", float64(grown)/(1<<20))
	if grown > 16<<20 {
		t.Errorf("heap in use grew by %d MiB: half-sent messages pin memory", grown>>20)
	}
	legitimateStillWorks(t, td)

	// Each stalled connection is closed by the daemon after the timeout.
	start := time.Now()
	for i, c := range stalled {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
			t.Fatalf("stalled connection %d: not closed by the daemon: %v", i, err)
		}
	}
	if el := time.Since(start); el > 8*time.Second {
		t.Errorf("stalled connections closed after %s, want about 2s", el)
	}
	if n := td.budget.InUse(); n != 0 {
		t.Errorf("receive budget holds %d bytes after every stalled connection closed", n)
	}
	legitimateStillWorks(t, td)
}

// The receive budget bounds what clients that really send big halves of
// messages can pin, across connections; small messages still pass.
func TestHostileClientsReceiveBudget(t *testing.T) {
	// No plugin: its archive would not fit in a 4 MiB control message.
	td := startDaemonConfig(t, Config{Limits: Limits{MessageTimeout: 3 * time.Second, FirstMessageTimeout: 3 * time.Second,
		HostMessageSize: 4 << 20, ControlMessageSize: 4 << 20, ReceiveBudget: 8 << 20}})
	if td.budget.Size() != 8<<20 {
		t.Fatalf("budget %d", td.budget.Size())
	}
	var wg sync.WaitGroup
	conns := make([]net.Conn, 6)
	for i := range conns {
		c, err := net.Dial("unix", td.socket)
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		defer c.Close()
		wg.Add(1)
		go func() { // ends when the daemon stops reading or closes c
			defer wg.Done()
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			c.Write(append(segmentHeader(4<<20-16), make([]byte, 3<<20)...))
		}()
	}
	peak := int64(0)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		peak = max(peak, td.budget.InUse())
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("receive budget peak %.1f MiB of %.1f MiB with 6 clients sending 3 MiB of 4 MiB messages", float64(peak)/(1<<20), float64(td.budget.Size())/(1<<20))
	if peak > td.budget.Size() {
		t.Fatalf("budget exceeded: %d", peak)
	}
	if peak == 0 {
		t.Fatal("the budget was never used: the test did not exercise it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := td.ctl.List(ctx); err != nil {
		t.Fatalf("operator while the budget is taken: %v", err)
	}
	s, err := host.Dial(ctx, td.socket)
	if err != nil {
		t.Fatalf("host while the budget is taken: %v", err)
	}
	if _, err := s.Dispatch(ctx, host.PhaseRequest, &host.Request{Method: "GET", Path: "/x"}, nil); err != nil {
		t.Fatalf("host dispatch while the budget is taken: %v", err)
	}
	s.Close()
	wg.Wait()
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
			t.Fatalf("stalled connection not closed: %v", err)
		}
	}
	waitFor(t, 5*time.Second, "the budget is returned", func() bool { return td.budget.InUse() == 0 })
}

// open is how many connections uid holds on s.
func (s *server) open(uid uint32) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.uids[uid]
}

// segmentHeader is a one-segment Cap'n Proto stream header announcing a
// message of about size bytes.
func segmentHeader(size int) []byte {
	h := make([]byte, 8)
	binary.LittleEndian.PutUint32(h[4:], uint32(size/8))
	return h
}

// bootstrapMessage is a complete RPC bootstrap message.
func bootstrapMessage(t *testing.T) []byte {
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		t.Fatal(err)
	}
	m, err := rpccp.NewRootMessage(seg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.NewBootstrap()
	if err != nil {
		t.Fatal(err)
	}
	b.SetQuestionId(0)
	out, err := msg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

// TestHookLaneComesBack: a dispatch larger than the host message limit
// makes the daemon cut the session's hook lane while its RPC connection
// lives on. That one call is answered by policy; the next ones go over
// RPC at once, and the session opens a new lane by itself.
func TestHookLaneComesBack(t *testing.T) {
	td := startDaemonConfig(t, Config{Runtime: testRuntime(t), Supervision: fastSupervision, Limits: Limits{HostMessageSize: 1 << 20}})
	td.install(t, pluginDir(t, testplugManifest("lanes", nil, hooks("request", "POST", "/l/:id", "2s", "fail-open", 0))))
	waitState(t, td.ctl, "lanes", 30*time.Second, "running", running)
	s := dial(t, td.socket, host.WithoutDirectLanes())
	if !s.Lane() {
		t.Fatal("no hook lane after dial")
	}
	post := func(body []byte) *host.Result {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := s.Dispatch(ctx, host.PhaseRequest, &host.Request{Method: "POST", Path: "/l/1", Header: http.Header{}, Body: body}, nil)
		if err != nil {
			t.Fatalf("dispatch: %v", err)
		}
		return res
	}
	if res := post([]byte("small")); res.Kind != host.MutateRequest {
		t.Fatalf("before: %+v", res)
	}
	post(make([]byte, 2<<20)) // over the limit: the daemon cuts the lane
	// The very next call is served (over RPC, or a new lane), not
	// answered by policy as if the daemon were away.
	if res := post([]byte("small")); res.Kind != host.MutateRequest || len(res.Skipped) != 0 {
		t.Fatalf("right after the cut: %+v", res)
	}
	waitFor(t, 10*time.Second, "the session to open a new hook lane", s.Lane)
	for range 5 {
		if res := post([]byte("small")); res.Kind != host.MutateRequest {
			t.Fatalf("on the new lane: %+v", res)
		}
	}
}
