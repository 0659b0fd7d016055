package wire

import (
	"net/http"
	"reflect"
	"testing"

	"capnproto.org/go/capnp/v3"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// TestReadHeaders: names are canonicalised, repeated names keep their
// values in order, empty names are dropped, and appending to one value
// list never changes another (they share one backing slice).
func TestReadHeaders(t *testing.T) {
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		t.Fatal(err)
	}
	rq, err := schema.NewRootHttpRequest(seg)
	if err != nil {
		t.Fatal(err)
	}
	in := [][2]string{{"accept", "a/b"}, {"X-Two", "1"}, {"", "dropped"}, {"x-two", "2"}, {"Empty-Value", ""}, {"Z", "last"}}
	l, err := rq.NewHeaders(int32(len(in)))
	if err != nil {
		t.Fatal(err)
	}
	for i, kv := range in {
		l.At(i).SetName(kv[0])
		l.At(i).SetValue(kv[1])
	}
	var e errs
	h := readHeaders(l, &e)
	if e.err != nil {
		t.Fatal(e.err)
	}
	want := http.Header{"Accept": {"a/b"}, "X-Two": {"1", "2"}, "Empty-Value": {""}, "Z": {"last"}}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("got %q, want %q", h, want)
	}
	h["Accept"] = append(h["Accept"], "more")
	if h.Get("Z") != "last" || len(h["X-Two"]) != 2 || h["X-Two"][0] != "1" {
		t.Fatalf("an append to one header changed another: %q", h)
	}
}

// canonicalKey answers what http.CanonicalHeaderKey answers, for names
// canonical already (its quick way out) and for every other kind.
func TestCanonicalKey(t *testing.T) {
	names := []string{"", "A", "a", "Content-Type", "content-type", "CONTENT-TYPE", "X-Header-a", "X-Header-A",
		"X-1-Foo", "X-1foo", "Www-Authenticate", "WWW-Authenticate", "-", "--x", "X--Y", "x_y", "X_Y", "Foo.Bar",
		"Foo Bar", "é-Tag", "Dnt", "X-Forwarded-For", "x-forwarded-for", "9p", "A-9-b"}
	for _, n := range names {
		if got, want := canonicalKey(n), http.CanonicalHeaderKey(n); got != want {
			t.Errorf("canonicalKey(%q) = %q, want %q", n, got, want)
		}
	}
}
