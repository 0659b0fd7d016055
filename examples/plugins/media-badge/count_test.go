package main

import (
	"net/http"
	"sync"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/plugin/plugintest"
)

// TestBadgeCountsConcurrentViews: 100 views of one item at once are all
// counted (the count is an atomic increment, not a Get then a Set).
func TestBadgeCountsConcurrentViews(t *testing.T) {
	h := plugintest.Start(t, &badge{})
	const views = 100
	var wg sync.WaitGroup
	errs := make(chan error, views)
	for range views {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := &plugin.Request{Method: "GET", Path: "/api/v1/media/7", Params: []plugin.Param{{Name: "id", Value: "7"}}}
			resp := &plugin.Response{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(`{"id":7}`)}
			errs <- h.Response("badge", req, resp)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := string(h.KV()["views/7"]); got != "100" {
		t.Errorf("KV views/7 = %q after %d concurrent views, want 100", got, views)
	}
}
