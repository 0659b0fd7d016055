package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// TestKill9UnderLoad kills the daemon with SIGKILL while a host drives
// key-value writes through media-badge and an operator installs, upgrades
// and removes a plugin in a loop, then checks the state directory with
// `dimplugd state check` and starts the daemon again on it. Nothing that
// was acknowledged may be lost: the view counter goes on from the last
// count a host saw (or one more, when the write in flight at the kill had
// committed), and the churning plugin is in the state its last
// acknowledged command left (or the one in flight), with no files left
// behind or moved to lost+found.
func TestKill9UnderLoad(t *testing.T) {
	d := newDaemonProc(t)
	d.start()
	d.ctl(false, "install", "--yes", exampleDir(t))
	churnV1 := pluginDir(t, testplugManifest("churn", nil, hooks("request", "GET", "/churn/:id", "1s", "fail-open", 0)))
	churnV2 := pluginDir(t, strings.Replace(testplugManifest("churn", nil, hooks("request", "GET", "/churn/:id", "1s", "fail-open", 0)),
		`version = "1.0.0"`, `version = "2.0.0"`, 1))
	dimplugd := buildBin(t, "./cmd/dimplugd", false)
	dimplugctl := buildBin(t, "./cmd/dimplugctl", true)
	ctl := func(args ...string) error {
		cmd := exec.Command(dimplugctl, append([]string{"--socket", d.control}, args...)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%w: %s", err, out.String())
		}
		return nil
	}

	const rounds = 4
	views := 0       // the last count a host saw: an acknowledged write
	churnState := "" // churn's version after the last restart, "" if not installed
	var kills, writes, commands int
	for round := range rounds {
		d.waitRunning("media-badge", 0)
		s := dial(t, d.socket, host.WithStartDegraded())

		stop := make(chan struct{})
		var wg sync.WaitGroup
		var (
			mu        sync.Mutex
			seen      = views
			first     = true
			uncertain int // calls answered by policy since the last count
			loadErr   error
			churn     = churnState // what the last acknowledged command left: "", "1.0.0", "2.0.0"
			inFlight  = churnState // what the command in flight at the kill would leave
		)
		wg.Add(2)
		go func() { // the host: one view at a time, so each count is one write
			defer wg.Done()
			resp := &host.Response{Status: 200, Header: http.Header{}, Body: []byte(`{}`)}
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				res, err := s.Dispatch(ctx, host.PhaseResponse, get("/api/v1/media/7"), resp)
				cancel()
				if err != nil || res.Kind != host.MutateResponse {
					// Answered by policy: while the daemon is away there is no
					// write, but a call cut by its deadline or the kill may
					// have written before the answer was lost.
					mu.Lock()
					uncertain++
					mu.Unlock()
					continue
				}
				var body struct{ Views int }
				if err := json.Unmarshal(res.ResponseMutation.Body, &body); err != nil {
					mu.Lock()
					loadErr = fmt.Errorf("media-badge body %q: %v", res.ResponseMutation.Body, err)
					mu.Unlock()
					return
				}
				mu.Lock()
				// The first count of a round may skip one: the write in
				// flight at the last kill may have committed; so may each
				// call answered by policy since the last count.
				skip := uncertain
				if first {
					skip++
				}
				if want := seen + 1; body.Views < want || body.Views > want+skip {
					loadErr = fmt.Errorf("round %d: views went from %d to %d (%d calls since unanswered by the plugin)", round, seen, body.Views, uncertain)
				}
				seen, first, uncertain = body.Views, false, 0
				writes++
				mu.Unlock()
			}
		}()
		go func() { // the operator: install, upgrade, remove, again
			defer wg.Done()
			steps := []struct {
				args []string
				left string
			}{
				{[]string{"install", "--yes", churnV1}, "1.0.0"},
				{[]string{"install", "--yes", "--replace", churnV2}, "2.0.0"},
				{[]string{"rm", "churn"}, ""},
			}
			mu.Lock()
			start := churn
			mu.Unlock()
			i := 0
			switch start { // go on from where the last round left it
			case "1.0.0":
				i = 1
			case "2.0.0":
				i = 2
			}
			for ; ; i = (i + 1) % len(steps) {
				select {
				case <-stop:
					return
				default:
				}
				st := steps[i]
				mu.Lock()
				inFlight = st.left
				mu.Unlock()
				if err := ctl(st.args...); err != nil {
					t.Logf("round %d: the kill cut dimplugctl %s: %q", round, strings.Join(st.args, " "), err.Error())
					return // the daemon died under it; the kill settles what it left
				}
				mu.Lock()
				churn, inFlight = st.left, st.left
				commands++
				mu.Unlock()
			}
		}()

		// Let the load run: a few commands and writes done, then the kill
		// lands at a different point of the loop each round.
		doneBefore := commands
		waitFor(t, 60*time.Second, "the operator's commands and the host's writes", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return commands >= doneBefore+2+round && seen >= views+20
		})
		time.Sleep(time.Duration(37*round) * time.Millisecond)
		d.kill9()
		kills++
		close(stop)
		s.Close()
		wg.Wait()
		if loadErr != nil {
			t.Fatal(loadErr)
		}
		views = seen

		// The stopped daemon's state directory checks out as it is.
		cmd := exec.Command(dimplugd, "state", "check", "--state-dir", d.state)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("round %d: state check after kill -9: %v\n%s", round, err, out)
		}
		d.start()
		if lost, _ := os.ReadDir(filepath.Join(d.state, "lost+found")); len(lost) != 0 {
			t.Errorf("round %d: the restart moved %d plugin directories to lost+found", round, len(lost))
		}
		got := d.churnVersion()
		if got != churn && got != inFlight {
			t.Errorf("round %d: churn is %q after the kill; the last acknowledged command left %q (the one in flight: %q)",
				round, got, churn, inFlight)
		}
		churnState = got
	}
	d.waitRunning("media-badge", 0)
	s := dial(t, d.socket)
	resp := &host.Response{Status: 200, Header: http.Header{}, Body: []byte(`{}`)}
	res := dispatch(t, s, host.PhaseResponse, get("/api/v1/media/7"), resp)
	var body struct{ Views int }
	if err := json.Unmarshal(res.ResponseMutation.Body, &body); err != nil || body.Views < views+1 || body.Views > views+2 {
		t.Errorf("after the last kill: views %d (%v), want %d or %d", body.Views, err, views+1, views+2)
	}
	s.Close()
	t.Logf("%d kills of the daemon under load: %d acknowledged key-value writes and %d acknowledged install/upgrade/remove commands, 0 lost",
		kills, writes, commands)
}

// churnVersion is the installed version of the "churn" plugin, "" if it is
// not installed.
func (p *daemonProc) churnVersion() string {
	p.t.Helper()
	out, _ := p.ctl(false, "ls", "--json")
	var list []host.PluginStatus
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		p.t.Fatalf("ls --json: %v\n%s", err, out)
	}
	for _, st := range list {
		if st.Name == "churn" {
			return st.Version
		}
	}
	return ""
}
