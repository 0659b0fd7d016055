package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"

	"github.com/dimplugd/dimplugd/sandbox"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// Metrics and health (docs/metrics.md).
//
// The Prometheus endpoint is off unless Config.MetricsListen is set: a
// loopback TCP address or "unix:/path" (a socket made by listenSocket with
// the control socket's owner, group and mode). It serves /metrics and
// /healthz. SetMetricsListen moves or stops it at run time.
//
// One source of truth: the collector reads, at each scrape, the counters
// `dimplugctl inspect` shows (each hook's breaker counts and answers by
// policy, each stream stage's counters, each plugin's state), so metrics
// and inspect never disagree. Only latency is recorded for the metrics at
// call time, in fixed-bucket histograms (wire.LatencyHistogram) that
// inspect's p50/p99 are estimated from too; hosts report the latency of
// their direct calls in the same buckets (schema HookStats).
//
// Labels are bounded: plugin names are validated at install, hook and
// stream stage names come from manifests, kinds and states are fixed sets.
// No label carries a request's path or route.

// hookLatency is one hook's latency: of the calls the daemon made, and of
// those hosts made on direct lanes and reported.
type hookLatency struct {
	daemon, direct wire.LatencyHistogram
}

// latency returns the latency histograms of hook name.
func (u *unit) latency(name string) *hookLatency {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.latencies == nil {
		u.latencies = map[string]*hookLatency{}
	}
	l, ok := u.latencies[name]
	if !ok {
		l = &hookLatency{}
		u.latencies[name] = l
	}
	return l
}

// addDirectStats counts what a host reported of its direct calls to hook
// (beyond the calls and failures the breaker counts): its answers by
// policy by cause, and the calls' latency.
func (u *unit) addDirectStats(hook string, hs schema.HookStats) {
	failures := hs.Failures()
	timeouts := min(hs.Timeouts(), failures)
	rejected := min(hs.Rejected(), failures-timeouts)
	pc := u.policy(hook)
	pc.addN(causeDeadline, timeouts)
	pc.addN(causeRejected, rejected)
	pc.addN(causeFailed, failures-timeouts-rejected)
	pc.addN(causeBreaker, hs.BreakerOpen())
	if !hs.HasLatencyCounts() {
		return // an older host
	}
	l, err := hs.LatencyCounts()
	if err != nil || l.Len() != wire.NumLatencyCounts {
		return
	}
	counts := make([]uint64, l.Len())
	for i := range counts {
		counts[i] = l.At(i)
	}
	u.latency(hook).direct.Add(counts, time.Duration(hs.LatencySumMicros())*time.Microsecond)
}

// addN counts n answers by policy for cause.
func (c *policyCounts) addN(cause string, n uint64) {
	if n == 0 {
		return
	}
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]uint64{}
	}
	c.n[cause] += n
	c.mu.Unlock()
}

// size is the frame's length in bytes.
func (fd *frameData) size() uint64 {
	if fd.shared {
		return fd.length
	}
	return uint64(len(fd.inline))
}

// answered counts a transform stage's answer to frame e.
func (c *stageCounters) answered(e inflight) {
	c.frames.Add(1)
	c.bytes.Add(e.frame.size())
	if !e.sent.IsZero() {
		c.latency.Observe(time.Since(e.sent))
	}
}

// runningProcess returns the running instance's process, or nil.
func (u *unit) runningProcess() sandbox.Process {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.inst == nil {
		return nil
	}
	return u.inst.proc
}

// pluginStates lists every state a plugin can be in, for the state gauge.
var pluginStates = []string{StateStopped, StateStarting, StateRunning, StateBackoff, StateQuarantined, StateFailed}

// label turns a cause or state ("breaker open", "half-open") into a label
// value ("breaker_open", "half_open").
func label(s string) string {
	return strings.NewReplacer(" ", "_", "-", "_").Replace(s)
}

// collector is the daemon's state as Prometheus metrics, read at scrape
// time.
type collector struct {
	d *Daemon

	ready, info, conns, dispatches                            *prometheus.Desc
	pluginState, pluginCrashes, pluginMemory, pluginCPU       *prometheus.Desc
	hookCalls, hookFailures, hookDuration, hookBreaker        *prometheus.Desc
	stageStreams, stageOpen, stageFrames, stageBytes          *prometheus.Desc
	stageDrops, stageMissed, stageFailures, stageFrameLatency *prometheus.Desc
}

func newCollector(d *Daemon) *collector {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("dimplugd_"+name, help, labels, nil)
	}
	return &collector{
		d:          d,
		ready:      desc("ready", "1 when the daemon is ready: its sockets serve and every plugin enabled at start has started or failed to; 0 while starting or stopping."),
		info:       desc("build_info", "The daemon's version; always 1.", "version"),
		conns:      desc("connections", "Open client connections on the host and control sockets."),
		dispatches: desc("dispatches_total", "Dispatch calls from hosts (requests hooks ran for through the daemon)."),

		pluginState:   desc("plugin_state", "1 for the plugin's current state, 0 for the others.", "plugin", "state"),
		pluginCrashes: desc("plugin_crashes_total", "Unexpected ends of the plugin's instances (crashes, failed health checks); each is followed by a restart unless the plugin is quarantined.", "plugin"),
		pluginMemory:  desc("plugin_memory_bytes", "Memory charged to the running instance's cgroup.", "plugin"),
		pluginCPU:     desc("plugin_cpu_seconds_total", "CPU time used by the running instance's processes, from its cgroup; starts at 0 with each instance.", "plugin"),

		hookCalls:    desc("hook_calls_total", "Hook calls that reached the plugin, through the daemon and on hosts' direct lanes.", "plugin", "hook", "phase"),
		hookFailures: desc("hook_failures_total", "Hook calls answered by the hook's failure policy instead of the plugin, by kind.", "plugin", "hook", "kind"),
		hookDuration: desc("hook_duration_seconds", "Latency of the hook calls that reached the plugin, by path: through the daemon, or on a host's direct lane (as the host measured it).", "plugin", "hook", "path"),
		hookBreaker:  desc("hook_breaker_state", "1 for the current state of the daemon's circuit breaker of the hook (closed, open, half_open), 0 for the others.", "plugin", "hook", "state"),

		stageStreams:      desc("stream_stage_streams_total", "Frame streams the stream stage took part in.", "plugin", "stage"),
		stageOpen:         desc("stream_stage_open_streams", "Frame streams the stream stage is in now.", "plugin", "stage"),
		stageFrames:       desc("stream_frames_total", "Frames the stage answered (transform) or was given (observe).", "plugin", "stage"),
		stageBytes:        desc("stream_bytes_total", "Bytes of the frames counted in dimplugd_stream_frames_total.", "plugin", "stage"),
		stageDrops:        desc("stream_drops_total", "Frames the stage dropped (transform), or missed for lack of credit (observe).", "plugin", "stage"),
		stageMissed:       desc("stream_deadline_misses_total", "Frames the stage did not answer within its deadline.", "plugin", "stage"),
		stageFailures:     desc("stream_stage_failures_total", "Streams the stage failed or was bypassed in (crash, error, broken protocol).", "plugin", "stage"),
		stageFrameLatency: desc("stream_frame_duration_seconds", "Time a transform stage took to answer a frame, from handing it over to the last part of the answer.", "plugin", "stage"),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.ready, c.info, c.conns, c.dispatches,
		c.pluginState, c.pluginCrashes, c.pluginMemory, c.pluginCPU,
		c.hookCalls, c.hookFailures, c.hookDuration, c.hookBreaker,
		c.stageStreams, c.stageOpen, c.stageFrames, c.stageBytes,
		c.stageDrops, c.stageMissed, c.stageFailures, c.stageFrameLatency} {
		ch <- d
	}
}

// latencyBuckets are wire.LatencyBuckets in seconds.
var latencyBuckets = func() []float64 {
	b := make([]float64, len(wire.LatencyBuckets))
	for i, d := range wire.LatencyBuckets {
		b[i] = d.Seconds()
	}
	return b
}()

// constHistogram turns a latency snapshot into a Prometheus histogram.
func constHistogram(desc *prometheus.Desc, s wire.LatencySnapshot, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(latencyBuckets))
	var cum uint64
	for i, le := range latencyBuckets {
		cum += s.Counts[i]
		buckets[le] = cum
	}
	return prometheus.MustNewConstHistogram(desc, s.Count(), s.Sum.Seconds(), buckets, labels...)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), labels...)
	}
	ready := 0.0
	if d.Ready() {
		ready = 1
	}
	gauge(c.ready, ready)
	gauge(c.info, 1, Version)
	gauge(c.conns, float64(d.openConns.Load()))
	counter(c.dispatches, uint64(d.dispatches.Load()))
	now := time.Now()
	for _, u := range d.sortedUnits() {
		rec, us := u.status()
		for _, s := range pluginStates {
			v := 0.0
			if s == us.state {
				v = 1
			}
			gauge(c.pluginState, v, u.name, s)
		}
		u.mu.Lock()
		crashes := u.crashTotal
		u.mu.Unlock()
		counter(c.pluginCrashes, crashes, u.name)
		if r, ok := u.runningProcess().(sandbox.UsageReporter); ok {
			if use, err := r.Usage(); err == nil {
				gauge(c.pluginMemory, float64(use.MemoryBytes), u.name)
				ch <- prometheus.MustNewConstMetric(c.pluginCPU, prometheus.CounterValue, use.CPU.Seconds(), u.name)
			}
		}
		for _, h := range rec.Manifest.Hooks {
			calls, _, circuit := u.breaker(h.Name).Stats(now)
			counter(c.hookCalls, calls, u.name, h.Name, string(h.Phase))
			causes, counts := u.policy(h.Name).snapshot()
			for i, cause := range causes {
				counter(c.hookFailures, counts[i], u.name, h.Name, label(cause))
			}
			for _, s := range []string{"closed", "open", "half-open"} {
				v := 0.0
				if s == circuit {
					v = 1
				}
				gauge(c.hookBreaker, v, u.name, h.Name, label(s))
			}
			l := u.latency(h.Name)
			ch <- constHistogram(c.hookDuration, l.daemon.Snapshot(), u.name, h.Name, "daemon")
			ch <- constHistogram(c.hookDuration, l.direct.Snapshot(), u.name, h.Name, "direct")
		}
		for _, st := range rec.Manifest.Streams {
			s := u.stageStats(st.Name)
			counter(c.stageStreams, s.streams.Load(), u.name, st.Name)
			gauge(c.stageOpen, float64(max(s.open.Load(), 0)), u.name, st.Name)
			counter(c.stageFrames, s.frames.Load(), u.name, st.Name)
			counter(c.stageBytes, s.bytes.Load(), u.name, st.Name)
			counter(c.stageDrops, s.dropped.Load(), u.name, st.Name)
			counter(c.stageMissed, s.missed.Load(), u.name, st.Name)
			counter(c.stageFailures, s.failures.Load(), u.name, st.Name)
			ch <- constHistogram(c.stageFrameLatency, s.latency.Snapshot(), u.name, st.Name)
		}
	}
}

// hookQuantiles returns the p50 and p99 latency of hook name, daemon and
// direct calls together, for inspect.
func (u *unit) hookQuantiles(name string) (p50, p99 time.Duration) {
	l := u.latency(name)
	s := l.daemon.Snapshot().Merge(l.direct.Snapshot())
	return s.Quantile(0.5), s.Quantile(0.99)
}

// readiness is what Ready needs besides Settled (ready.go).
type readiness struct {
	serving atomic.Bool // Start has returned: the sockets serve
	latched atomic.Bool // ready once; plugins restarting later do not undo it
}

// Ready reports whether the daemon is ready and not stopping: Start has
// returned (its sockets serve) and, at some point since, every enabled
// plugin's first start had come to an end (Settled). Once ready, it stays
// so until it stops, whatever its plugins do: they are the metrics' and
// dimplugctl's to report. /healthz answers 200 exactly when it is true.
func (d *Daemon) Ready() bool {
	if d.draining.Load() || !d.ready.serving.Load() {
		return false
	}
	if d.ready.latched.Load() {
		return true
	}
	if !d.Settled() {
		return false
	}
	d.ready.latched.Store(true)
	return true
}

// metricsState is the metrics endpoint: its registry, made at Start, and
// its listener, which SetMetricsListen changes.
type metricsState struct {
	mu      sync.Mutex
	reg     *prometheus.Registry
	handler http.Handler
	group   group // the control socket's, for a Unix socket
	mode    os.FileMode
	addr    string // as configured; "" when off
	srv     *http.Server
	ln      net.Listener
	closed  bool
}

// metricsUnixPrefix marks a --metrics-listen value that is a socket path.
const metricsUnixPrefix = "unix:"

// startMetrics makes the registry and serves it on Config.MetricsListen,
// if set.
func (d *Daemon) startMetrics(opGroup group, mode os.FileMode) error {
	m := &d.metrics
	m.mu.Lock()
	m.reg = prometheus.NewRegistry()
	m.reg.MustRegister(newCollector(d),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:            slogPrinter{d},
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	mux.HandleFunc("GET /healthz", d.serveHealth)
	m.handler = mux
	m.group, m.mode = opGroup, mode
	m.mu.Unlock()
	if d.cfg.MetricsListen == "" {
		return nil
	}
	return d.SetMetricsListen(d.cfg.MetricsListen)
}

type slogPrinter struct{ d *Daemon }

func (p slogPrinter) Println(v ...any) { p.d.log.Warn("metrics: " + fmt.Sprint(v...)) }

// MetricsHandler returns the handler of the metrics endpoint (/metrics and
// /healthz), whether or not it listens anywhere.
func (d *Daemon) MetricsHandler() http.Handler {
	d.metrics.mu.Lock()
	defer d.metrics.mu.Unlock()
	return d.metrics.handler
}

// MetricsAddr returns where the metrics endpoint listens: a TCP address
// ("127.0.0.1:9477", with the port chosen if 0 was asked for),
// "unix:/path", or "" when it is off.
func (d *Daemon) MetricsAddr() string {
	m := &d.metrics
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ln == nil {
		return ""
	}
	if m.ln.Addr().Network() == "unix" {
		return metricsUnixPrefix + m.ln.Addr().String()
	}
	return m.ln.Addr().String()
}

// CheckMetricsListen checks a --metrics-listen value without listening:
// a loopback IP literal with a port ("127.0.0.1:9477", "[::1]:9477"), or
// "unix:" and an absolute socket path; "" means off.
func CheckMetricsListen(addr string) error {
	if addr == "" {
		return nil
	}
	if path, ok := strings.CutPrefix(addr, metricsUnixPrefix); ok {
		if !strings.HasPrefix(path, "/") {
			return fmt.Errorf("metrics address %q: want unix: and an absolute socket path (unix:/run/dimplugd/metrics.sock)", addr)
		}
		return nil
	}
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics address %q: %w (want a loopback address such as 127.0.0.1:9477, or unix:/path)", addr, err)
	}
	ip, err := netip.ParseAddr(h)
	if err != nil || !ip.IsLoopback() || ip.Zone() != "" {
		return fmt.Errorf("metrics address %q: %q is not a loopback IP address: the metrics endpoint listens only on 127.0.0.0/8, [::1] "+
			"or a Unix socket, since it has no authentication (put a proxy in front of it to scrape it from elsewhere)", addr, h)
	}
	return nil
}

// SetMetricsListen moves the metrics endpoint to addr (see
// CheckMetricsListen), or stops it when addr is "". The new listener is
// opened before the old one closes, so a failure leaves the endpoint as
// it was; scrapes in flight on the old one are cut. Asking for the
// address in use does nothing. For a configuration reload (SIGHUP).
func (d *Daemon) SetMetricsListen(addr string) error {
	if err := CheckMetricsListen(addr); err != nil {
		return err
	}
	m := &d.metrics
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.handler == nil {
		return errors.New("metrics: the daemon is not running")
	}
	if addr == m.addr {
		return nil
	}
	var ln net.Listener
	if path, ok := strings.CutPrefix(addr, metricsUnixPrefix); ok {
		uln, err := listenSocket(d, faceMetrics, "--metrics-listen", path, m.mode, m.group, nil)
		if err != nil {
			return fmt.Errorf("metrics socket: %w", err)
		}
		ln = uln
	} else if addr != "" {
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			return fmt.Errorf("metrics: %w (--metrics-listen)", err)
		}
	}
	m.stopLocked()
	m.addr = addr
	if ln == nil {
		d.log.Info("metrics endpoint off")
		return nil
	}
	m.ln = ln
	m.srv = &http.Server{
		Handler:           m.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	srv := m.srv
	limited := netutil.LimitListener(ln, metricsMaxConns)
	go func() { _ = srv.Serve(limited) }() // ends with srv.Close (stopLocked)
	d.log.Info("metrics endpoint serving", "listen", addr, "addr", ln.Addr().String())
	return nil
}

// metricsMaxConns bounds the endpoint's connections.
const metricsMaxConns = 16

func (m *metricsState) stopLocked() {
	if m.srv != nil {
		m.srv.Close() // closes the listener too (unlinking a socket file)
		m.srv, m.ln = nil, nil
	}
}

// closeMetrics stops the endpoint for good; safe to call more than once.
func (d *Daemon) closeMetrics() {
	m := &d.metrics
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopLocked()
	m.closed = true
}

// Health is what /healthz answers, as JSON.
type Health struct {
	// Status is "ok" (ready; HTTP 200), "starting" or "stopping" (503).
	Status        string         `json:"status"`
	Ready         bool           `json:"ready"`
	Version       string         `json:"version"`
	UptimeSeconds float64        `json:"uptime_seconds"`
	Plugins       map[string]int `json:"plugins"` // by state
}

// Health returns the daemon's health, as /healthz reports it.
func (d *Daemon) Health() Health {
	h := Health{Status: "ok", Ready: d.Ready(), Version: Version,
		UptimeSeconds: time.Since(d.started).Seconds(), Plugins: d.Counts().States}
	switch {
	case d.draining.Load():
		h.Status = "stopping"
	case !h.Ready:
		h.Status = "starting"
	}
	return h
}

func (d *Daemon) serveHealth(w http.ResponseWriter, r *http.Request) {
	h := d.Health()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !h.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(h)
}

// writeStatusExtras writes the daemon status fields of readiness and
// metrics: plugins by state and the metrics address.
func writeStatusExtras(st schema.DaemonStatus, counts Counts, metricsAddr string) error {
	var states []string
	for _, s := range pluginStates {
		if counts.States[s] > 0 {
			states = append(states, s)
		}
	}
	l, err := st.NewPluginsByState(int32(len(states)))
	if err != nil {
		return err
	}
	for i, s := range states {
		if err := l.At(i).SetState(s); err != nil {
			return err
		}
		l.At(i).SetCount(uint32(counts.States[s]))
	}
	return st.SetMetricsListen(metricsAddr)
}
