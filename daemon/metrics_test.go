package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/sandbox"
	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// scrape is one answer of the metrics endpoint, parsed.
type scrape struct {
	text string
	fams map[string]*dto.MetricFamily
}

// httpGet fetches path from the metrics endpoint at addr ("127.0.0.1:N"
// or "unix:/path").
func httpGet(t testing.TB, addr, path string) (int, string) {
	t.Helper()
	tr := &http.Transport{}
	url := "http://" + addr + path
	if sock, ok := strings.CutPrefix(addr, "unix:"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}
		url = "http://metrics" + path
	}
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	defer tr.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func scrapeMetrics(t testing.TB, addr string) scrape {
	t.Helper()
	code, text := httpGet(t, addr, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, text)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, text)
	}
	return scrape{text: text, fams: fams}
}

// find returns the metric of family name whose labels include want, or nil.
func (s scrape) find(name string, want map[string]string) *dto.Metric {
	mf := s.fams[name]
	if mf == nil {
		return nil
	}
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		ok := true
		for k, v := range want {
			if got[k] != v {
				ok = false
			}
		}
		if ok {
			return m
		}
	}
	return nil
}

// value is the value of a counter or gauge, or -1 when it is missing.
func (s scrape) value(name string, labels map[string]string) float64 {
	m := s.find(name, labels)
	switch {
	case m == nil:
		return -1
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return -1
}

// histCount is the sample count of a histogram, or -1 when it is missing.
func (s scrape) histCount(name string, labels map[string]string) int64 {
	m := s.find(name, labels)
	if m == nil || m.Histogram == nil {
		return -1
	}
	return int64(m.Histogram.GetSampleCount())
}

// lint fails the test on every problem promlint (the library form of
// `promtool check metrics`) finds in a scrape, and pipes it through
// promtool too when it is installed.
func lintScrape(t *testing.T, s scrape) {
	t.Helper()
	problems, err := promlint.New(strings.NewReader(s.text)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "dimplugd_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
	if pt, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(pt, "check", "metrics")
		cmd.Stdin = strings.NewReader(s.text)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	} else {
		t.Log("promtool is not installed; linted with promlint only")
	}
}

// TestMetricsEndpoint scrapes a daemon after known traffic through it to a
// sandboxed plugin: hook calls, a missed deadline, requests to 100
// distinct paths, a frame stream; and checks names, labels, values, lint
// and that no label grew with the paths. inspect's p50/p99 and the status
// fields come from the same counters.
func TestMetricsEndpoint(t *testing.T) {
	td := startDaemonConfig(t, Config{Supervision: fastSupervision, MetricsListen: "127.0.0.1:0"})
	td.install(t, pluginDir(t, testplugManifest("metered", []string{"-frames", "xor"},
		hooks("request", "GET", "/m/:id", "100ms", "fail-open", 0)+
			streamStage("flip", "video/segment", "transform", "fail-closed", "10s", 0))))
	waitState(t, td.ctl, "metered", 30*time.Second, "running", running)
	addr := td.MetricsAddr()
	if !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") {
		t.Fatalf("MetricsAddr = %q", addr)
	}

	s := dial(t, td.socket, host.WithoutDirectLanes()) // the daemon makes every call
	for i := 1; i <= 3; i++ {
		if res := dispatch(t, s, host.PhaseRequest, get(fmt.Sprintf("/m/%d", i)), nil); res.Kind != host.MutateRequest {
			t.Fatalf("call %d: %+v", i, res)
		}
	}
	if res := dispatch(t, s, host.PhaseRequest, get("/m/slow?sleep=1s"), nil); len(res.Skipped) != 1 {
		t.Fatalf("slow call: %+v", res)
	}
	sc := scrapeMetrics(t, addr)
	hook := map[string]string{"plugin": "metered", "hook": "request-hook"}
	with := func(m map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"dimplugd_hook_calls_total", with(hook, "phase", "request"), 4},
		{"dimplugd_hook_failures_total", with(hook, "kind", "deadline"), 1},
		{"dimplugd_hook_breaker_state", with(hook, "state", "closed"), 1},
		{"dimplugd_hook_breaker_state", with(hook, "state", "open"), 0},
		{"dimplugd_plugin_state", map[string]string{"plugin": "metered", "state": "running"}, 1},
		{"dimplugd_plugin_state", map[string]string{"plugin": "metered", "state": "failed"}, 0},
		{"dimplugd_plugin_crashes_total", map[string]string{"plugin": "metered"}, 0},
		{"dimplugd_ready", nil, 1},
		{"dimplugd_build_info", map[string]string{"version": Version}, 1},
	} {
		if got := sc.value(c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if n := sc.histCount("dimplugd_hook_duration_seconds", with(hook, "path", "daemon")); n != 4 {
		t.Errorf("hook_duration_seconds{path=daemon} count = %d, want 4", n)
	}
	if n := sc.histCount("dimplugd_hook_duration_seconds", with(hook, "path", "direct")); n != 0 {
		t.Errorf("hook_duration_seconds{path=direct} count = %d, want 0", n)
	}
	// The deadline miss took at least its 100ms: one sample above 0.1 s.
	if m := sc.find("dimplugd_hook_duration_seconds", with(hook, "path", "daemon")); m != nil {
		for _, b := range m.Histogram.GetBucket() {
			if b.GetUpperBound() == 0.05 && b.GetCumulativeCount() != 3 {
				t.Errorf("le=0.05 bucket = %d, want the 3 fast calls", b.GetCumulativeCount())
			}
		}
	}
	for _, name := range []string{"go_goroutines", "process_open_fds", "process_resident_memory_bytes"} {
		if sc.fams[name] == nil {
			t.Errorf("no %s", name)
		}
	}
	if _, ok := td.cfg.Runtime.(sandbox.ProcessRuntime); !ok {
		// The sandbox's cgroup: a running Go plugin holds some memory
		// and has used some CPU.
		if v := sc.value("dimplugd_plugin_memory_bytes", map[string]string{"plugin": "metered"}); v < 1<<20 {
			t.Errorf("plugin_memory_bytes = %v, want at least 1 MiB", v)
		}
		if v := sc.value("dimplugd_plugin_cpu_seconds_total", map[string]string{"plugin": "metered"}); v <= 0 {
			t.Errorf("plugin_cpu_seconds_total = %v, want > 0", v)
		}
	}
	lintScrape(t, sc)

	// Cardinality: requests to 100 distinct raw paths add no series.
	series := func(sc scrape) int {
		n := 0
		for name, mf := range sc.fams {
			if strings.HasPrefix(name, "dimplugd_") {
				n += len(mf.GetMetric())
			}
		}
		return n
	}
	before := series(sc)
	for i := 0; i < 100; i++ {
		dispatch(t, s, host.PhaseRequest, get(fmt.Sprintf("/m/raw-%d-%x", i, i*7919)), nil)
	}
	sc = scrapeMetrics(t, addr)
	if after := series(sc); after != before {
		t.Errorf("dimplugd_ series: %d before 100 distinct paths, %d after", before, after)
	}
	if strings.Contains(sc.text, "raw-") || strings.Contains(sc.text, "/m/") {
		t.Error("a request path or route shows in a label")
	}
	if got := sc.value("dimplugd_hook_calls_total", with(hook, "phase", "request")); got != 104 {
		t.Errorf("calls after 100 more = %v, want 104", got)
	}

	// A frame stream: 3 frames through the xor stage.
	sizes := []int{100, 4096, 64 << 10}
	roundTrip(t, openStream(t, s, "video/segment"), sizes)
	stage := map[string]string{"plugin": "metered", "stage": "flip"}
	waitFor(t, 5*time.Second, "the stage's counters", func() bool {
		sc = scrapeMetrics(t, addr)
		return sc.value("dimplugd_stream_frames_total", stage) == 3
	})
	total := 0
	for _, n := range sizes {
		total += n
	}
	for _, c := range []struct {
		name string
		want float64
	}{
		{"dimplugd_stream_bytes_total", float64(total)},
		{"dimplugd_stream_drops_total", 0},
		{"dimplugd_stream_deadline_misses_total", 0},
		{"dimplugd_stream_stage_streams_total", 1},
	} {
		if got := sc.value(c.name, stage); got != c.want {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}
	if n := sc.histCount("dimplugd_stream_frame_duration_seconds", stage); n != 3 {
		t.Errorf("stream_frame_duration_seconds count = %d, want 3", n)
	}
	lintScrape(t, sc)

	// inspect: p50 and p99 from the same histogram, ordered.
	st, err := td.ctl.Inspect(context.Background(), "metered")
	if err != nil {
		t.Fatal(err)
	}
	h := st.Hooks[0]
	p50, err1 := time.ParseDuration(h.P50)
	p99, err2 := time.ParseDuration(h.P99)
	if err1 != nil || err2 != nil || p50 <= 0 || p50 > p99 || p99 > 10*time.Second {
		t.Errorf("inspect p50 %q p99 %q", h.P50, h.P99)
	}
	if p50 > 50*time.Millisecond {
		t.Errorf("p50 %s: most calls were fast", p50)
	}
}

// TestMetricsDirectLane: a host's direct calls reach the metrics through
// its reports: their latency (path="direct"), and a deadline miss among
// the failures by kind.
func TestMetricsDirectLane(t *testing.T) {
	td := startDaemonConfig(t, Config{Supervision: fastSupervision, MetricsListen: "127.0.0.1:0"})
	td.install(t, pluginDir(t, testplugManifest("lane", nil, hooks("request", "GET", "/l/:id", "100ms", "fail-open", 0))))
	waitState(t, td.ctl, "lane", 30*time.Second, "running", running)
	s := dial(t, td.socket)
	waitFor(t, 10*time.Second, "a direct lane", func() bool {
		before := td.dispatches.Load()
		dispatch(t, s, host.PhaseRequest, get("/l/warm"), nil)
		return td.dispatches.Load() == before
	})
	before := td.dispatches.Load()
	for i := 0; i < 5; i++ {
		dispatch(t, s, host.PhaseRequest, get(fmt.Sprintf("/l/%d", i)), nil)
	}
	if res := dispatch(t, s, host.PhaseRequest, get("/l/slow?sleep=1s"), nil); len(res.Skipped) != 1 {
		t.Fatalf("slow call: %+v", res)
	}
	if n := td.dispatches.Load() - before; n != 0 {
		t.Fatalf("%d calls went through the daemon", n)
	}
	hook := map[string]string{"plugin": "lane", "hook": "request-hook"}
	direct := map[string]string{"plugin": "lane", "hook": "request-hook", "path": "direct"}
	var sc scrape
	waitFor(t, 10*time.Second, "the host's report of its direct calls", func() bool {
		sc = scrapeMetrics(t, td.MetricsAddr())
		return sc.value("dimplugd_hook_failures_total", map[string]string{"plugin": "lane", "kind": "deadline"}) == 1
	})
	// Every direct call: the warm-up ones, the 5 and the slow one.
	calls := sc.value("dimplugd_hook_calls_total", hook)
	daemonN := sc.histCount("dimplugd_hook_duration_seconds", map[string]string{"plugin": "lane", "path": "daemon"})
	directN := sc.histCount("dimplugd_hook_duration_seconds", direct)
	if directN < 7 || float64(directN+daemonN) != calls {
		t.Errorf("calls_total %v, duration counts: daemon %d + direct %d (want at least 7 direct, adding up)", calls, daemonN, directN)
	}
	if m := sc.find("dimplugd_hook_duration_seconds", direct); m == nil || m.Histogram.GetSampleSum() < 0.1 {
		t.Errorf("direct latency sum below the slow call's 100ms: %v", m)
	}
	lintScrape(t, sc)
	st, err := td.ctl.Inspect(context.Background(), "lane")
	if err != nil {
		t.Fatal(err)
	}
	if h := st.Hooks[0]; h.P50 == "" || h.P99 == "" || h.ByPolicy["deadline"] != 1 {
		t.Errorf("inspect after direct calls: %+v", h)
	}
}

// TestMetricsUnixSocketAndRebind: the endpoint on a Unix socket made like
// the control socket (mode 0600 without an operator group), then moved to
// TCP and turned off at run time; a refused address changes nothing.
func TestMetricsUnixSocketAndRebind(t *testing.T) {
	sock := filepath.Join(shortTempDir(t, "met"), "m.sock")
	td := startDaemonConfig(t, Config{Runtime: sandbox.ProcessRuntime{}, MetricsListen: "unix:" + sock})
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("metrics socket mode %v, want a socket with 0600", fi.Mode())
	}
	if got := td.MetricsAddr(); got != "unix:"+sock {
		t.Errorf("MetricsAddr = %q", got)
	}
	if code, body := httpGet(t, "unix:"+sock, "/healthz"); code != 200 || !strings.Contains(body, `"status":"ok"`) {
		t.Errorf("/healthz on the socket: %d %s", code, body)
	}
	for _, bad := range []string{"0.0.0.0:9477", "localhost:9477", "192.0.2.1:80", "unix:relative.sock", "9477"} {
		if err := td.SetMetricsListen(bad); err == nil {
			t.Errorf("SetMetricsListen(%q) accepted", bad)
		}
	}
	if got := td.MetricsAddr(); got != "unix:"+sock {
		t.Errorf("after refused addresses, MetricsAddr = %q", got)
	}
	if err := td.SetMetricsListen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the old socket file is still there: %v", err)
	}
	addr := td.MetricsAddr()
	scrapeMetrics(t, addr)
	st, err := td.ctl.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.MetricsListen != addr {
		t.Errorf("status metrics_listen %q, want %q", st.MetricsListen, addr)
	}
	if err := td.SetMetricsListen(""); err != nil {
		t.Fatal(err)
	}
	if got := td.MetricsAddr(); got != "" {
		t.Errorf("off, MetricsAddr = %q", got)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections", addr)
	}
}

// TestHealthStartingThenReady: a daemon whose enabled plugin takes its
// time to start answers /healthz 503 "starting", and status says not
// ready, until the plugin's start ends (here: it fails after the start
// timeout); then 200 "ok" with the version and the plugins by state.
func TestHealthStartingThenReady(t *testing.T) {
	dir := shortTempDir(t, "hl")
	state := filepath.Join(dir, "state")
	plug := t.TempDir()
	if err := os.WriteFile(filepath.Join(plug, "plugin.toml"), []byte("name = \"sleepy\"\nversion = \"1.0.0\"\nentrypoint = \"sleepy.sh\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// It never answers the handshake.
	if err := os.WriteFile(filepath.Join(plug, "sleepy.sh"), []byte("#!/bin/sh\nexec /bin/sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	sup := fastSupervision
	sup.StartTimeout = 3 * time.Second
	sup.BackoffInitial = time.Minute // one start only
	cfg := Config{StateDir: state, Socket: filepath.Join(dir, "d.sock"), ControlSocket: filepath.Join(dir, "c.sock"),
		Runtime: sandbox.ProcessRuntime{}, Supervision: sup, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	// A first daemon installs it, enabled.
	first, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	archive, err := host.Archive(plug)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.Install(context.Background(), archive, installEnabled()); err != nil {
		first.Close()
		t.Fatal(err)
	}
	first.Close()

	cfg.MetricsListen = "127.0.0.1:0"
	d, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	addr := d.MetricsAddr()
	code, body := httpGet(t, addr, "/healthz")
	var h Health
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		t.Fatalf("/healthz body %q: %v", body, err)
	}
	if code != http.StatusServiceUnavailable || h.Status != "starting" || h.Ready || h.Plugins[StateStarting] != 1 {
		t.Errorf("while the plugin starts: %d %+v", code, h)
	}
	ctl, err := host.DialControl(context.Background(), cfg.ControlSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if st, err := ctl.Status(context.Background()); err != nil || st.Ready {
		t.Errorf("status while starting: %+v, %v", st, err)
	}
	if v := scrapeMetrics(t, addr).value("dimplugd_ready", nil); v != 0 {
		t.Errorf("dimplugd_ready while starting = %v", v)
	}
	waitFor(t, 15*time.Second, "/healthz 200", func() bool {
		code, body = httpGet(t, addr, "/healthz")
		return code == http.StatusOK
	})
	h = Health{}
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		t.Fatal(err)
	}
	if h.Status != "ok" || !h.Ready || h.Version != Version || h.UptimeSeconds <= 0 || h.Plugins[StateStarting] != 0 || sum(h.Plugins) != 1 {
		t.Errorf("ready: %+v", h)
	}
	st, err := ctl.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ready || st.UptimeSeconds <= 0 || st.Plugins != 1 || sum(st.PluginsByState) != 1 || st.MetricsListen != addr {
		t.Errorf("status when ready: %+v", st)
	}
	var out bytes.Buffer
	if err := json.NewEncoder(&out).Encode(st); err != nil || !strings.Contains(out.String(), `"ready":true`) || !strings.Contains(out.String(), `"plugins_by_state":{`) {
		t.Errorf("status JSON: %s %v", out.String(), err)
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// TestMetricsLint lints the collector itself, with a plugin of every kind
// of metric, as client_golang's testutil does.
func TestMetricsLint(t *testing.T) {
	td := startDaemonConfig(t, Config{Runtime: sandbox.ProcessRuntime{}})
	td.install(t, pluginDir(t, testplugManifest("linted", nil,
		hooks("request", "GET", "/x/:id", "1s", "fail-open", 0)+
			streamStage("flip", "video/segment", "transform", "fail-closed", "10s", 0))))
	waitState(t, td.ctl, "linted", 30*time.Second, "running", running)
	problems, err := promlintCollector(newCollector(td.Daemon))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	// Every family is documented in docs/metrics.md.
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	sc := scrapeHandler(t, td.Daemon)
	var names []string
	for name := range sc.fams {
		if strings.HasPrefix(name, "dimplugd_") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	if len(names) < 15 {
		t.Errorf("only %d dimplugd_ families: %v", len(names), names)
	}
	for _, name := range names {
		if !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("%s is not in docs/metrics.md", name)
		}
	}
}

// TestLatencyQuantile checks the estimate against known samples.
func TestLatencyQuantile(t *testing.T) {
	var h wire.LatencyHistogram
	if got := h.Snapshot().Quantile(0.5); got != 0 {
		t.Errorf("empty: %s", got)
	}
	for i := 0; i < 98; i++ {
		h.Observe(700 * time.Microsecond) // (500µs, 1ms]
	}
	h.Observe(40 * time.Millisecond) // (25ms, 50ms]
	h.Observe(time.Minute)           // past the last bound
	s := h.Snapshot()
	p50, p99 := s.Quantile(0.5), s.Quantile(0.99)
	if p50 <= 500*time.Microsecond || p50 > time.Millisecond {
		t.Errorf("p50 = %s, want within (500µs, 1ms]", p50)
	}
	if p99 <= 25*time.Millisecond || p99 > 50*time.Millisecond {
		t.Errorf("p99 = %s, want within (25ms, 50ms]", p99)
	}
	if got := s.Quantile(1); got != 10*time.Second {
		t.Errorf("p100 = %s, want the last bound", got)
	}
	if s.Count() != 100 || s.Sum < time.Minute {
		t.Errorf("count %d sum %s", s.Count(), s.Sum)
	}
}

func installEnabled() registry.InstallOptions { return registry.InstallOptions{Enable: true} }

func promlintCollector(c prometheus.Collector) ([]promlint.Problem, error) {
	return testutil.CollectAndLint(c)
}

// scrapeHandler scrapes d's metrics handler in process.
func scrapeHandler(t *testing.T, d *Daemon) scrape {
	t.Helper()
	rec := httptest.NewRecorder()
	d.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(rec.Body.String()))
	if err != nil {
		t.Fatal(err)
	}
	return scrape{text: rec.Body.String(), fams: fams}
}

// TestStatusAndInspectCLI: `dimplugctl status` shows readiness, uptime and
// plugins by state, in text and JSON; `inspect` shows each hook's p50 and
// p99 after traffic.
func TestStatusAndInspectCLI(t *testing.T) {
	td := startDaemonConfig(t, Config{Supervision: fastSupervision, MetricsListen: "127.0.0.1:0"})
	td.install(t, pluginDir(t, testplugManifest("shown", nil, hooks("request", "GET", "/s/:id", "1s", "fail-open", 0))))
	waitState(t, td.ctl, "shown", 30*time.Second, "running", running)
	s := dial(t, td.socket, host.WithoutDirectLanes())
	for i := 0; i < 3; i++ {
		dispatch(t, s, host.PhaseRequest, get(fmt.Sprintf("/s/%d", i)), nil)
	}
	waitFor(t, 10*time.Second, "readiness", td.Ready)
	ctl := func(args ...string) string {
		t.Helper()
		bin := buildBin(t, "./cmd/dimplugctl", true)
		out, err := exec.Command(bin, append([]string{"--socket", td.control}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("dimplugctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	out := ctl("status")
	for _, want := range []string{"dimplugd " + Version + ", ready, up ", "plugins:  1 (1 running)", "metrics:  " + td.MetricsAddr()} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	var st host.DaemonStatus
	if err := json.Unmarshal([]byte(ctl("--json", "status")), &st); err != nil {
		t.Fatal(err)
	}
	if !st.Ready || st.UptimeSeconds <= 0 || st.PluginsByState["running"] != 1 || st.MetricsListen != td.MetricsAddr() {
		t.Errorf("status --json: %+v", st)
	}
	out = ctl("inspect", "shown")
	if !strings.Contains(out, "3 calls, 0 failed, p50 ") || !strings.Contains(out, ", p99 ") {
		t.Errorf("inspect lacks the latency:\n%s", out)
	}
	var ps host.PluginStatus
	if err := json.Unmarshal([]byte(ctl("--json", "inspect", "shown")), &ps); err != nil {
		t.Fatal(err)
	}
	if h := ps.Hooks[0]; h.P50 == "" || h.P99 == "" {
		t.Errorf("inspect --json: %+v", h)
	}
}
