// Command hostile is the plugin of the daemon's hostile-plugin suite: a real
// plugin, built with the SDK, that on request makes one of the escape and
// abuse attempts of package sandbox/escapetest and reports what happened.
//
// Its request hook reads the query "attempt=<name>&arg=<x>", runs that
// attempt and answers 200 with
//
//	X-Escape-Attempt: <name>
//	X-Escape-Blocked: true | false
//	X-Escape-Errno:   <errno names, or empty>
//	body:             "blocked: <detail>" or "ESCAPED: <detail>"
//
// "attempt=ping" answers 200 "pong"; an unknown attempt answers 404.
//
// As a safety net it runs no attempt unless it is pid 1 of its own pid
// namespace, that is, started by a sandboxing runtime: the bombs are real.
// Outside one it answers 403.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"

	"github.com/dimplugd/dimplugd/sandbox/escapetest"
	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

type hostile struct{}

func (hostile) HookRequest(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	q := req.Query()
	name := q.Get("attempt")
	if name == "ping" {
		return text(http.StatusOK, "pong"), nil
	}
	a, ok := escapetest.Lookup(name)
	if !ok {
		return text(http.StatusNotFound, fmt.Sprintf("no attempt %q", name)), nil
	}
	if os.Getpid() != 1 {
		return text(http.StatusForbidden, "refusing to run "+name+": not sandboxed (pid "+strconv.Itoa(os.Getpid())+", not 1 of its own pid namespace)"), nil
	}
	r := a.Run(q.Get("arg"))
	resp := text(http.StatusOK, r.String())
	resp.Header.Set("X-Escape-Attempt", a.Name)
	resp.Header.Set("X-Escape-Blocked", strconv.FormatBool(r.Blocked))
	resp.Header.Set("X-Escape-Errno", r.Errno)
	return resp, nil
}

func text(status int, body string) *plugin.Response {
	return &plugin.Response{
		Status: status,
		Header: http.Header{"Content-Type": {"text/plain; charset=utf-8"}},
		Body:   []byte(body),
	}
}

func main() {
	if err := plugin.Serve(hostile{}); err != nil {
		fmt.Fprintln(os.Stderr, "hostile:", err)
		os.Exit(1)
	}
}
